"""The exception tree of dualpool.

    DualpoolError                  root: catch this to catch everything of ours
    ├── ConfigError                a config file or value is wrong (names the field)
    ├── RequestError               an OpenAI request body we cannot estimate
    ├── CatalogError               an unknown model or GPU, or a bad spec file
    ├── InfeasibleConfigError      an engine config vLLM would refuse to start
    └── WorkloadError              a trace or workload file we cannot read

Every message says what was wrong, the value we saw, and what to do about it.
The CLI prints the message on one line (no traceback) and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "ConfigError",
    "DualpoolError",
    "InfeasibleConfigError",
    "RequestError",
    "WorkloadError",
]


class DualpoolError(Exception):
    """Root of every error dualpool raises on purpose."""


class ConfigError(DualpoolError, ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class RequestError(DualpoolError, ValueError):
    """An OpenAI request body is malformed; `param` names the offending field.

    The gateway turns this into an OpenAI-style 400 error object.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class CatalogError(DualpoolError, KeyError):
    """An unknown model or GPU name, or a spec file that cannot be read."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class InfeasibleConfigError(DualpoolError, ValueError):
    """An engine config that vLLM would refuse to start (says by how much)."""


class WorkloadError(DualpoolError, ValueError):
    """A workload or trace file that cannot be read; names the file and line."""
