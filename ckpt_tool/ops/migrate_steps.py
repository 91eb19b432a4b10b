"""Typed migrate steps: the one validated boundary between a plan, the journal on disk, and the filesystem.

A step is what ``migrate --apply`` does to one path, and what ``--undo``
reverses. Steps come from two places: the plan (plugins' proposals, checked by
the core) and the journal in ROOT — a file anyone with write access to the
tree can edit, so it is untrusted input. Both go through ``Step.from_json`` /
``Step.validate`` here: an operation from the allowed set, ROOT-relative paths
that cannot leave ROOT (no absolute path, no ``..``, ``.`` or empty component,
no NUL, none of the tool's own file names), integers where integers belong,
sha256 digests as hex, written data that matches its digest, and a converter
only from the names the loaded plugins declare. A step that fails any check
is never executed; the journal reader turns the ``StepError`` into one
``error:`` line naming the journal line.

Content identity (``FileId``): a moved weights file is recognised by size,
mtime and inode (a rename keeps all three) and, where those differ — a tree
copied with ``cp -r`` or rsync, new inodes and mtimes — by a *sampled* sha256
recorded at plan time: the whole file up to 4 MiB, beyond that its first and
last MiB and 8 blocks of 64 KiB spread evenly. Hashing every byte of 100 GB of
weights at plan time would take minutes; the sample reads about 2.5 MiB per
file. The trade-off: a same-size file whose changes avoid every sampled block
would be taken for the original. That is only ever used to decide that a file
can be *renamed back* (undo) or that a rename already happened (resume) — a
rename never destroys bytes — while a file migrate would *delete* on undo (a
written or copied companion, a converted file) is compared by its full sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from ckpt_tool.io.atomic import TEMP_PREFIX
from ckpt_tool.limits import MAX_MIGRATE_COPY_BYTES, MAX_MIGRATE_REASON, MAX_MIGRATE_WRITE_BYTES

MOVE, COPY, WRITE, MKDIR, RMDIR, DERIVE = "move", "copy", "write", "mkdir", "rmdir", "derive"
OPS = (MKDIR, MOVE, COPY, WRITE, RMDIR, DERIVE)
JOURNAL_NAME = ".ckpt-tool-migrate.journal"
LOCK_NAME = ".ckpt-tool-migrate.lock"
OWN_NAMES = (JOURNAL_NAME, LOCK_NAME)

# which fields each operation uses (all of them required); i, op, group, run and reason are common to all
_FIELDS: dict[str, frozenset[str]] = {
    MKDIR: frozenset({"dst"}),
    RMDIR: frozenset({"src"}),
    MOVE: frozenset({"src", "dst", "fp"}),
    COPY: frozenset({"src", "dst", "fp", "sha256"}),
    WRITE: frozenset({"dst", "data", "sha256"}),
    DERIVE: frozenset({"src", "dst", "fp", "converter", "params"}),
}
_COMMON = frozenset({"i", "op", "group", "run", "reason"})
_INT64 = 1 << 63
_HEX = frozenset("0123456789abcdef")
_CONVERTER_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$", re.ASCII)
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_PARAMS = 64

SAMPLE_FULL = 4 << 20  # files up to this size are hashed whole
SAMPLE_EDGE = 1 << 20  # first and last MiB
SAMPLE_BLOCK = 64 << 10
SAMPLE_BLOCKS = 8  # spread evenly between the edges
_SAMPLE_TAG = b"ckpt-tool sampled sha256 v1\0"


class StepError(ValueError):
    """A step (or a journal record) that must not be executed; the text says what is wrong."""


# --------------------------------------------------------------------------- field checks


def _show(value: str) -> str:
    """``value`` for an error message, shortened (a hostile journal can hold megabytes in one path)."""
    return repr(value if len(value) <= 120 else value[:120] + "...")


def check_rel(value: Any, what: str) -> str:
    """``value`` as a ROOT-relative path that stays inside ROOT, or ``StepError``."""
    if not isinstance(value, str):
        raise StepError(f"{what} must be a path (text), not {type(value).__name__}")
    if not value:
        raise StepError(f"{what} is empty")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(os.fsencode(value))
        except UnicodeError:
            raise StepError(f"{what} {_show(value)} is not a valid file name") from None
    if size > MAX_PATH_BYTES:
        raise StepError(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if "\0" in value:
        raise StepError(f"{what} {_show(value)} contains a NUL byte")
    if value.startswith("/"):
        raise StepError(f"{what} {_show(value)} is absolute; journal paths are relative to ROOT")
    parts = value.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            kind = f"a {part!r}" if part else "an empty"
            raise StepError(f"{what} {_show(value)} has {kind} component; it must stay inside ROOT")
    if size > MAX_NAME_BYTES and any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in parts):
        raise StepError(f"{what} {_show(value)} has a name longer than {MAX_NAME_BYTES} bytes")
    if TEMP_PREFIX in value and any(part.startswith(TEMP_PREFIX) for part in parts):
        raise StepError(f"{what} {_show(value)} uses the temp-file prefix {TEMP_PREFIX}")
    if parts[0] in OWN_NAMES:
        raise StepError(f"{what} {_show(value)} names migrate's own journal or lock")
    return value


def _int(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise StepError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value < _INT64:
        raise StepError(f"{what} {value} is out of range")
    return value


def _hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise StepError(f"{what} must be a sha256 digest (64 lowercase hex digits)")
    return value


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise StepError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise StepError(f"{what} is longer than {limit} characters")
    return value


def sha256_text(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class FileId:
    """What identifies a source file: ``lstat`` at plan time plus a sampled sha256 of its content."""

    size: int
    mtime_ns: int
    ino: int
    sample: str

    def __post_init__(self) -> None:
        _int(self.size, "fp size")
        _int(self.mtime_ns, "fp mtime_ns", low=-_INT64)
        _int(self.ino, "fp inode")
        _hex(self.sample, "fp sampled sha256")

    def to_json(self) -> list[Any]:
        return [self.size, self.mtime_ns, self.ino, self.sample]

    @classmethod
    def from_json(cls, value: Any) -> FileId:
        if not isinstance(value, list) or len(value) != 4:
            raise StepError("fp must be [size, mtime_ns, inode, sampled sha256]")
        return cls(value[0], value[1], value[2], value[3])

    def same_stat(self, st: os.stat_result) -> bool:
        """Unchanged since the plan: same size, mtime and inode (what a rename keeps)."""
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns and st.st_ino == self.ino


def _params(value: Any) -> dict[str, Any]:
    if not isinstance(value, (dict, MappingProxyType)) or len(value) > MAX_PARAMS:
        raise StepError(f"params must be a mapping of at most {MAX_PARAMS} entries")
    for key, item in value.items():
        _text(key, "params key", 64)
        if isinstance(item, float) and not math.isfinite(item):
            raise StepError(f"params {key!r} is not finite")
        if item is not None and not isinstance(item, (int, float, str)):
            raise StepError(f"params {key!r} must be a number, text, true/false or null")
        if isinstance(item, str) and len(item) > 1024:
            raise StepError(f"params {key!r} is too long")
    return dict(value)


# --------------------------------------------------------------------------- converters


def declared_converters() -> dict[str, str]:
    """``{converter name: plugin}`` for every converter a loaded plugin declares.

    A plugin declares the functions migrate may call at apply time in a
    ``MIGRATE_CONVERTERS`` tuple of ``"module:function"`` names inside its own
    package. A journal can only name one of these: nothing else is imported.
    """
    from ckpt_tool.plugins import get_plugin_manager

    out: dict[str, str] = {}
    for name, plugin in get_plugin_manager().list_name_plugin():
        if plugin is None:
            continue
        package = getattr(plugin, "__name__", "") or ""
        for conv in getattr(plugin, "MIGRATE_CONVERTERS", ()) or ():
            module = str(conv).split(":", 1)[0]
            if package and _CONVERTER_RE.match(str(conv)) and (module == package or module.startswith(package + ".")):
                out[str(conv)] = name
    return out


def check_converter(value: Any) -> str:
    name = _text(value, "converter", 200)
    if not _CONVERTER_RE.match(name):
        raise StepError(f"converter {_show(name)} is not a 'module:function' name")
    if name not in declared_converters():
        raise StepError(
            f"converter {_show(name)} is not one a loaded plugin declares (if the plugin that planned it is "
            "installed, check CKPT_TOOL_PLUGINS)"
        )
    return name


def load_converter(name: str) -> Any:
    """The function behind a declared converter name (checked again: the name may come from a journal)."""
    check_converter(name)
    module, func = name.split(":", 1)
    return getattr(importlib.import_module(module), func)


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class Step:
    """One planned change below ROOT. Paths are ROOT-relative (``check_rel``); ``group`` is its checkpoint folder."""

    i: int
    op: str
    group: int
    run: str
    reason: str = ""
    src: str | None = None
    dst: str | None = None
    fp: FileId | None = None
    sha256: str | None = None  # write: of data; copy: of the source's content at plan time
    data: str | None = None
    converter: str | None = None
    params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # a Step is valid by construction: whatever builds one (the plan, the journal reader) gets it checked
        if self.params is not None and isinstance(self.params, dict):
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        self.validate()

    def validate(self) -> Step:
        """Check every field (see the module docstring); returns self, raises ``StepError``."""
        if self.op not in _FIELDS:
            raise StepError(f"unknown operation {_show(str(self.op))} (allowed: {', '.join(OPS)})")
        _int(self.i, "i")
        _int(self.group, "group")
        if self.group > self.i:
            raise StepError(f"group {self.group} of step {self.i} comes from nowhere")
        if self.run != ".":
            check_rel(self.run, "run")
        _text(self.reason, "reason", MAX_MIGRATE_REASON)
        used = _FIELDS[self.op]
        for f in ("src", "dst", "fp", "sha256", "data", "converter", "params"):
            present = getattr(self, f) is not None
            if f in used and not present:
                raise StepError(f"a {self.op} step needs {f}")
            if present and f not in used:
                raise StepError(f"a {self.op} step has no {f}")
        if self.src is not None:
            check_rel(self.src, "src")
        if self.dst is not None:
            check_rel(self.dst, "dst")
        if self.fp is not None and not isinstance(self.fp, FileId):
            raise StepError("fp must be a file fingerprint")
        if self.sha256 is not None:
            _hex(self.sha256, "sha256")
        if self.data is not None:
            _text(self.data, "data", MAX_MIGRATE_WRITE_BYTES)
            if len(self.data.encode("utf-8", "surrogateescape")) > MAX_MIGRATE_WRITE_BYTES:
                raise StepError(f"data is larger than {MAX_MIGRATE_WRITE_BYTES} bytes")
            if sha256_text(self.data) != self.sha256:
                raise StepError("data does not match its sha256")
        if self.op == COPY and self.fp is not None and self.fp.size > MAX_MIGRATE_COPY_BYTES:
            raise StepError(f"copies are for small companion files (at most {MAX_MIGRATE_COPY_BYTES >> 20} MiB)")
        if self.converter is not None:
            check_converter(self.converter)
        if self.params is not None:
            _params(self.params)
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"i": self.i, "op": self.op, "group": self.group, "run": self.run, "reason": self.reason}
        for f in ("src", "dst", "sha256", "data", "converter"):
            value = getattr(self, f)
            if value is not None:
                out[f] = value
        if self.params is not None:
            out["params"] = dict(self.params)
        if self.fp is not None:
            out["fp"] = self.fp.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Step:
        """A validated step from its JSON form (``StepError`` for anything else)."""
        if not isinstance(obj, dict):
            raise StepError("a step must be a JSON object")
        unknown = set(obj) - _KNOWN
        if unknown:
            raise StepError(f"unknown field(s) {_show(', '.join(sorted(map(str, unknown))))}")
        for f in ("i", "op", "group", "run"):
            if f not in obj:
                raise StepError(f"missing field {f!r}")
        op = obj["op"]
        if not isinstance(op, str) or op not in _FIELDS:
            raise StepError(f"unknown operation {_show(str(op))} (allowed: {', '.join(OPS)})")
        fp = FileId.from_json(obj["fp"]) if obj.get("fp") is not None else None
        return cls(
            i=obj["i"],
            op=op,
            group=obj["group"],
            run=obj["run"],
            reason=obj.get("reason", ""),
            src=obj.get("src"),
            dst=obj.get("dst"),
            fp=fp,
            sha256=obj.get("sha256"),
            data=obj.get("data"),
            converter=obj.get("converter"),
            params=obj.get("params"),
        )

    def public(self) -> dict[str, Any]:
        """The fields a report shows."""
        return {"i": self.i, "run": self.run, "op": self.op, "src": self.src, "dst": self.dst, "reason": self.reason}


_KNOWN = frozenset(f.name for f in fields(Step))


# --------------------------------------------------------------------------- content fingerprints


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.pread(fd, min(n, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def sample_ranges(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the bytes the sampled digest reads."""
    if size <= SAMPLE_FULL:
        return [(0, size)]
    spread = [((size - SAMPLE_BLOCK) * k // (SAMPLE_BLOCKS + 1), SAMPLE_BLOCK) for k in range(1, SAMPLE_BLOCKS + 1)]
    return [(0, SAMPLE_EDGE), *spread, (size - SAMPLE_EDGE, SAMPLE_EDGE)]


def sampled_sha256(fd: int, size: int) -> str:
    """sha256 of a file's size and sampled blocks (the whole file up to ``SAMPLE_FULL``)."""
    h = hashlib.sha256(_SAMPLE_TAG + size.to_bytes(8, "little"))
    for offset, length in sample_ranges(size):
        h.update(_pread_exact(fd, length, offset))
    return h.hexdigest()


def full_sha256(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)
