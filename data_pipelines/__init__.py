"""Shard builders (``kimi-lab data build KIND``) and shard inspection."""
