"""The tool's exception types and their exit codes.

Every failure a user can cause (bad input, missing file, refused merge) or that
the machine causes (full disk, read-only directory, permission denied) is one
of these; ``cli.main`` turns them into ``error: <what> — <what to do>`` on
stderr and the exit code below. Anything else is a bug and is reported as an
internal error (with a traceback only under ``--debug`` / ``CKPT_TOOL_DEBUG=1``).

``from_os_error`` is the one place that turns an ``OSError`` into words: the
errno decides the hint, so "no space left" always says the same thing whether
it came from a merge, a migrate or a convert.
"""

from __future__ import annotations

import errno
import os

# Exit codes (documented in README).
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in ckpt-tool
EXIT_USAGE = 2  # bad command line or option value (typer's own code for usage errors)
EXIT_NOT_FOUND = 3  # path does not exist / nothing recognisable there
EXIT_INVALID = 4  # malformed, truncated, hostile file, or one past a documented safety limit
EXIT_UNSUPPORTED = 5  # valid but not supported (legacy torch, TorchScript, a tuner that cannot be merged)
EXIT_REFUSED = 6  # refused operation: incompatible inputs, would overwrite, not exact
EXIT_CONFLICT = 7  # migrate plan conflicts, lock held, a journal that cannot be trusted
EXIT_DIFFER = 8  # `diff`: the checkpoints differ (not an error; 0 = identical or within --atol)
EXIT_ENVIRONMENT = 9  # the machine refused: disk full, read-only filesystem, permission denied, out of memory
EXIT_INTERRUPTED = 130


class CkptError(Exception):
    """Base class: a message for the user plus an optional hint saying what to do.

    ``message`` may span several lines (a list of mismatches): the first line
    is the summary, the others are printed as they are.
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        lines = self.message.rstrip("\n").split("\n")
        if self.hint:
            if len(lines) == 1:
                lines[0] += f" \u2014 {self.hint}"
            else:
                lines.append(f"\u2014 {self.hint}")
        return "error: " + "\n".join(lines)


class UsageError(CkptError):
    """A bad option value or combination (``--dtype fp7``, ``--max-shard-size inf``)."""

    exit_code = EXIT_USAGE


class NotFound(CkptError):
    exit_code = EXIT_NOT_FOUND


class InvalidFile(CkptError):
    """The file is malformed, truncated, inconsistent or hostile, or exceeds a safety limit."""

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


class EnvironmentFailure(CkptError):
    """The machine refused: no space left, read-only filesystem, permission denied, out of memory, I/O error.

    Nothing is wrong with the input; the same command succeeds once the cause is fixed.
    """

    exit_code = EXIT_ENVIRONMENT


_HINTS = {
    errno.ENOSPC: "free some space (or choose another --out) and run the command again; nothing partial was published",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the command again",
    errno.EROFS: "the filesystem is read-only; choose a writable destination",
    errno.EACCES: "check the permissions of the file and its directory",
    errno.EPERM: "check the permissions of the file and its directory",
    errno.EIO: "the device reported an I/O error; check the disk",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and retry",
    errno.ENAMETOOLONG: "use a shorter path",
}


def error_doc(exc: CkptError) -> dict[str, object]:
    """The ``error`` object of the JSON contract (``$defs/error`` in schemas/output.schema.json)."""
    return {"message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}


def from_os_error(exc: OSError, doing: str | None = None) -> CkptError:
    """The user-facing error for an ``OSError`` (``doing`` says what was attempted, e.g. "writing OUT").

    ENOENT becomes ``NotFound``; a path that is a directory where a file is
    expected (or the reverse) becomes ``Refused``; everything the machine
    refused (ENOSPC, EROFS, EACCES, ...) becomes ``EnvironmentFailure``.
    """
    what = exc.strerror or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    text = f"{what}" + (f": {os.fsdecode(where)}" if where is not None else "")
    if doing:
        text = f"{doing}: {text}"
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(text, "check the path")
    if code in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY):
        return Refused(text, "the path is not of the kind expected here; choose another one")
    return EnvironmentFailure(text, _HINTS.get(code or 0, "check the disk and the permissions, then retry"))
