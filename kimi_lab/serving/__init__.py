"""What faces a user or a client: the OpenAI-compatible server and its continuous batching, token
streaming, the interactive chat (``kimi-lab chat``) and lm-evaluation-harness's model. Built on
``kimi_lab.decode``; nothing below imports it."""
