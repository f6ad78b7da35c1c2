"""kimi_lab: reproduce and study the Kimi K2.5 training recipe, from a laptop CPU to a GPU cluster."""

__version__ = "0.1.0"
