"""Tools that models call: a sandbox for the Python code they write."""

from kimi_lab.tools.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    ToolResult,
    run_python,
    sandbox_unavailable_reason,
)

__all__ = ["SandboxLimits", "SandboxUnavailable", "ToolResult", "run_python", "sandbox_unavailable_reason"]
