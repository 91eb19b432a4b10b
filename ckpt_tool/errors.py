"""The tool's exception types and their exit codes.

Every failure a user can cause (bad input, missing file, refused merge) is one
of these; ``cli.main`` turns them into a single ``error: <what> — <what to do>``
line on stderr and the exit code below. Anything else is a bug and is reported
as an internal error (with a traceback only under ``--debug`` /
``CKPT_TOOL_DEBUG=1``).
"""

from __future__ import annotations

# Exit codes (documented in README).
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in ckpt-tool
EXIT_USAGE = 2  # bad command line (typer's own code)
EXIT_NOT_FOUND = 3  # path does not exist / nothing recognisable there
EXIT_INVALID = 4  # malformed, truncated or hostile file
EXIT_UNSUPPORTED = 5  # valid but not supported (legacy torch, TorchScript, unknown tuner)
EXIT_REFUSED = 6  # refused operation: incompatible inputs, would overwrite, not mergeable
EXIT_CONFLICT = 7  # migrate plan conflicts, lock held
EXIT_DIFFER = 8  # `diff`: the checkpoints differ (not an error; 0 = identical or within --atol)
EXIT_INTERRUPTED = 130


class CkptError(Exception):
    """Base class: a message for the user plus an optional hint saying what to do."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = self.message
        if self.hint:
            text += f" \u2014 {self.hint}"
        return "error: " + " ".join(text.split("\n"))


class NotFound(CkptError):
    exit_code = EXIT_NOT_FOUND


class InvalidFile(CkptError):
    """The file is malformed, truncated, inconsistent or hostile."""

    exit_code = EXIT_INVALID


class UnsafeFile(InvalidFile):
    """The file asks to execute or import something outside the allowlist."""


class Unsupported(CkptError):
    exit_code = EXIT_UNSUPPORTED


class Refused(CkptError):
    """The inputs are valid but the operation cannot be done safely or exactly."""

    exit_code = EXIT_REFUSED


class Conflict(CkptError):
    exit_code = EXIT_CONFLICT
