"""Run-directory files (metrics, expert load, status), loggers and atomic checkpoints."""
