"""Provenance records: which tool, operation and inputs made a checkpoint.

Every checkpoint the transform engine writes carries one record (built by
``build`` from the plan, so merge, convert and any later command get it
without code of their own):

* in every safetensors file, as compact JSON under ``__metadata__[KEY]``
  (it travels with the file, even when copied alone);
* in directory layouts, also in ``FILE`` beside the weights (the only place
  torch-zip outputs such as LitGPT's ``lit_model.pth`` can carry it). The file
  holds one entry per checkpoint of the directory, each naming the weights
  files it describes by name, tensor count, bytes and a digest of the tensor
  names/dtypes/shapes, so an entry is only believed for the files it
  describes, and a stale one (the weights were replaced by another tool) is
  recognised and ignored with a warning.

A record names the tool and version, the operation, each input (role, path as
given, format, kind, each file's size and sampled fingerprint, and the input's
own provenance, nested: a conversion of a merged model says what was merged),
plus the operation's own section (``merge``: scale, where r/alpha came from,
the adapter's fingerprint). No timestamp: the same inputs give the same bytes.

Records found on disk are hostile input: bounded size (``MAX_HEADER_CHARS``,
``MAX_FILE_BYTES``), bounded nesting (``MAX_DEPTH``), every value type-checked
and every string length-capped. A bad record is a warning, never an error, and
it is never used. Reading needs JSON only (no torch): ``inspect`` stays instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import CkptError

if TYPE_CHECKING:
    from ckpt_tool.io.container import Probe
    from ckpt_tool.model import CheckpointInfo

#: safetensors ``__metadata__`` key holding the record (compact JSON).
KEY = "ckpt_tool.provenance"
#: The record file beside the weights in directory layouts.
FILE = "ckpt-tool-provenance.json"
SCHEMA = "ckpt-tool-provenance"
FILE_SCHEMA = "ckpt-tool-provenance-file"
VERSION = 1

#: Limits on records found on disk (and on what we write).
MAX_HEADER_CHARS = 256 << 10
MAX_FILE_BYTES = 4 << 20
MAX_DEPTH = 8  # nested input records (a chain of conversions); deeper ones are cut and marked
MAX_ENTRIES = 256  # checkpoints described by one provenance file
MAX_LISTED_FILES = 64  # files listed per input (all of them are in the input's fingerprint)
MAX_OUTPUTS = 100_000
_MAX_STR = 4096
_MAX_ITEMS = 1024
_MAX_KEYS = 256
_MAX_JSON_DEPTH = 12  # within one record level


class BadRecord(ValueError):
    """A provenance record that does not follow the schema (the reason is the message)."""


# --- digests ------------------------------------------------------------------------------------------


def layout_digest(tensors: Iterable[tuple[str, str, Iterable[int]]]) -> str:
    """A short digest of (name, dtype, shape) of a file's tensors, independent of their order."""
    h = hashlib.sha256(b"ckpt-tool tensor layout v1\0")
    for name, dtype, shape in sorted((n, d, tuple(s)) for n, d, s in tensors):
        h.update(f"{name}\0{dtype}\0{','.join(map(str, shape))}\n".encode())
    return h.hexdigest()[:16]


# --- writing ------------------------------------------------------------------------------------------


def describe_input(role: str, info: CheckpointInfo) -> dict[str, Any]:
    """An input as a record names it: role, path as given, format, kind, files with size and fingerprint.

    Raises ``OSError`` when a file cannot be read (the caller maps it).
    """
    from ckpt_tool.io.fingerprint import ALGORITHM, file_fingerprint

    given: dict[str, str] = {}  # one entry per real file, named as given (a cache snapshot links to blobs/<hash>)
    for f in [*info.files, *(t.file for t in info.tensors if t.file)]:
        given.setdefault(os.path.realpath(f), os.path.abspath(f))
    paths = sorted(given.values())
    files = []
    h = hashlib.sha256(b"ckpt-tool input fingerprint v1\0")
    for p in paths:
        fp = file_fingerprint(p)
        size = os.stat(p).st_size
        h.update(f"{os.path.basename(p)}\0{size}\0{fp}\n".encode())
        if len(files) < MAX_LISTED_FILES:
            files.append({"name": os.path.basename(p), "size": size, "fingerprint": fp})
    out: dict[str, Any] = {
        "role": role,
        "path": os.path.abspath(info.path),
        "format": info.format,
        "kind": info.kind,
    }
    if info.adapter_type:
        out["adapter_type"] = info.adapter_type
    hub = _hub_origin(info)
    if hub:
        out["hub"] = hub
    out.update({"file_count": len(paths), "fingerprint": h.hexdigest(), "fingerprint_algorithm": ALGORITHM})
    out["files"] = files
    if info.provenance:
        out["provenance"] = nested(info.provenance)
    return out


def _hub_origin(info: CheckpointInfo) -> dict[str, str] | None:
    """``{"id": "org/name", "commit": sha}`` when the input is a snapshot in the Hugging Face cache."""
    from ckpt_tool.io.hfcache import repo_root

    d = (info.details or {}).get("dir") or info.path
    d = d if os.path.isdir(d) else os.path.dirname(d)
    root = repo_root(os.path.abspath(d))
    if root is None:
        return None
    return {"id": root.name.removeprefix("models--").replace("--", "/"), "commit": os.path.basename(os.path.abspath(d))}


def build(operation: str, inputs: dict[str, CheckpointInfo], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one run of ``operation`` over ``inputs`` (role → input); ``extra`` adds sections."""
    from ckpt_tool import __version__

    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "tool": {"name": "ckpt-tool", "version": __version__},
        "operation": operation,
        "inputs": [describe_input(role, info) for role, info in inputs.items()],
    }
    for k, v in (extra or {}).items():
        if k not in rec:
            rec[k] = v
    return rec


def nested(record: dict[str, Any], depth: int = 1) -> dict[str, Any]:
    """A record as it is nested inside a later one: without file lists and outputs, depth-capped."""
    out = {k: v for k, v in record.items() if k not in ("outputs",)}
    inputs = []
    for inp in record.get("inputs") or []:
        item = {k: v for k, v in inp.items() if k not in ("files", "provenance")}
        sub = inp.get("provenance")
        if isinstance(sub, dict):
            if depth >= MAX_DEPTH:
                item["provenance"] = {"truncated": True}
            else:
                item["provenance"] = nested(sub, depth + 1)
        inputs.append(item)
    out["inputs"] = inputs
    return out


def dumps(record: dict[str, Any]) -> str:
    """Compact, sorted JSON (the same record always gives the same bytes)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False)


def header_text(record: dict[str, Any]) -> str:
    """The record for a safetensors header: compact, without ``outputs``, and under ``MAX_HEADER_CHARS``
    (file lists, then nested records, are dropped if an extreme input would make it larger)."""
    rec = {k: v for k, v in record.items() if k != "outputs"}
    text = dumps(rec)
    if len(text) > MAX_HEADER_CHARS:
        rec = nested(rec, MAX_DEPTH)  # no file lists, nested records cut
        text = dumps(rec)
    if len(text) > MAX_HEADER_CHARS:
        rec = {k: v for k, v in rec.items() if k in ("schema", "version", "tool", "operation")}
        rec["truncated"] = True
        text = dumps(rec)
    return text


def output_entry(name: str, tensors: Iterable[tuple[str, str, tuple[int, ...], int]]) -> dict[str, Any]:
    """How a record names one weights file it describes: (name, dtype, shape, nbytes) of its tensors."""
    items = list(tensors)
    return {
        "file": name,
        "tensors": len(items),
        "bytes": sum(n for _, _, _, n in items),
        "digest": layout_digest((a, b, c) for a, b, c, _ in items),
    }


def file_bytes(record: dict[str, Any], outputs: list[dict[str, Any]], keep: list[dict[str, Any]]) -> bytes:
    """The provenance file of one directory: this run's entry (describing ``outputs``) first, then the
    entries of other checkpoints in the directory that are kept (``keep``)."""
    entry = {**{k: v for k, v in record.items() if k != "outputs"}, "outputs": outputs}
    doc = {"schema": FILE_SCHEMA, "version": VERSION, "entries": [entry, *keep[: MAX_ENTRIES - 1]]}
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()


def entries_to_keep(directory: Path, replaced: set[str]) -> list[dict[str, Any]] | None:
    """Entries of an existing provenance file in ``directory`` that still describe files there which
    this run does not replace. ``None`` when the file exists but cannot be read as ours (the caller
    then treats it as an existing output that needs ``--force``)."""
    path = directory / FILE
    if not os.path.lexists(path):
        return []
    try:
        entries = read_file(path)
    except BadRecord:
        return None
    keep = []
    for e in entries:
        names = [o["file"] for o in e["outputs"]]
        if names and not any(n in replaced for n in names) and all((directory / n).is_file() for n in names):
            keep.append(e)
    return keep


# --- reading (hostile input) -------------------------------------------------------------------------


def _clean(value: Any, depth: int = 0) -> Any:
    """A JSON value with every container, string and number bounded; raises ``BadRecord``."""
    if depth > _MAX_JSON_DEPTH:
        raise BadRecord("nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > 1 << 63:
            raise BadRecord("an integer out of range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecord("a number that is not finite")
        return value
    if isinstance(value, str):
        if len(value) > _MAX_STR:
            raise BadRecord(f"a string of {len(value)} characters")
        return value
    if isinstance(value, list):
        if len(value) > _MAX_ITEMS:
            raise BadRecord(f"a list of {len(value)} items")
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if len(value) > _MAX_KEYS:
            raise BadRecord(f"an object with {len(value)} keys")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > 256:
                raise BadRecord("a key that is not a short string")
            out[k] = _clean(v, depth + 1)
        return out
    raise BadRecord(f"a value of type {type(value).__name__}")


def _str(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise BadRecord(f"{where}{key} is not a non-empty string")
    return v


def parse_record(obj: Any, depth: int = 0) -> dict[str, Any]:
    """Check one record against the schema and return a cleaned copy; raises ``BadRecord``."""
    if not isinstance(obj, dict):
        raise BadRecord(f"a record is a JSON {type(obj).__name__}, not an object")
    if obj.get("truncated") is True and depth > 0 and set(obj) <= {"truncated"}:
        return {"truncated": True}
    if obj.get("schema") != SCHEMA:
        raise BadRecord(f"schema is {str(obj.get('schema'))[:60]!r}, not {SCHEMA!r}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadRecord("version is not a positive integer")
    tool = obj.get("tool")
    if not isinstance(tool, dict):
        raise BadRecord("tool is not an object")
    _str(tool, "name", "tool.")
    _str(tool, "version", "tool.")
    op = _str(obj, "operation", "")
    if op is not None and len(op) > 64:
        raise BadRecord("operation is too long")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or len(inputs) > 64:
        raise BadRecord("inputs is not a list of at most 64 inputs")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in ("inputs", "outputs"):
            continue
        out[k] = _clean(v, 1)
    clean_inputs = []
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict):
            raise BadRecord(f"inputs[{i}] is not an object")
        _str(inp, "role", f"inputs[{i}].")
        _str(inp, "path", f"inputs[{i}].")
        item = {k: _clean(v, 1) for k, v in inp.items() if k != "provenance"}
        sub = inp.get("provenance")
        if sub is not None:
            if depth + 1 >= MAX_DEPTH:
                item["provenance"] = {"truncated": True}
            else:
                item["provenance"] = parse_record(sub, depth + 1)
        clean_inputs.append(item)
    out["inputs"] = clean_inputs
    if "outputs" in obj:
        out["outputs"] = _outputs(obj["outputs"])
    return out


def _outputs(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_OUTPUTS:
        raise BadRecord("outputs is not a list")
    outs = []
    for o in value:
        if not isinstance(o, dict):
            raise BadRecord("an output is not an object")
        name = o.get("file")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or len(name) > 255:
            raise BadRecord("an output does not name a file of the directory")
        for key in ("tensors", "bytes"):
            v = o.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise BadRecord(f"output {name!r}: {key} is not a count")
        if not isinstance(o.get("digest"), str) or len(o["digest"]) > 128:
            raise BadRecord(f"output {name!r}: digest is not a string")
        outs.append({"file": name, "tensors": o["tensors"], "bytes": o["bytes"], "digest": o["digest"]})
    return outs


def parse_text(text: str) -> dict[str, Any]:
    """A record from a safetensors header value; raises ``BadRecord``."""
    if len(text) > MAX_HEADER_CHARS:
        raise BadRecord(f"{len(text)} characters is implausibly large")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"not valid JSON ({str(exc)[:80]})") from None
    return parse_record(obj)


def read_file(path: Path) -> list[dict[str, Any]]:
    """The entries of a provenance file (each a record with ``outputs``); raises ``BadRecord``."""
    from ckpt_tool.io.sidefiles import read_json

    if not path.is_file():  # a symlink is fine (a Hugging Face cache snapshot links every file to a blob)
        raise BadRecord("not a regular file")
    try:
        doc = read_json(path, "the provenance record", MAX_FILE_BYTES)
    except CkptError as exc:
        raise BadRecord(exc.message.removeprefix(f"{path}: ")) from None
    if not isinstance(doc, dict) or doc.get("schema") != FILE_SCHEMA:
        raise BadRecord(f"not a {FILE_SCHEMA!r} document")
    entries = doc.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise BadRecord(f"entries is not a list of at most {MAX_ENTRIES}")
    out = []
    for e in entries:
        rec = parse_record(e)
        if "outputs" not in rec:
            raise BadRecord("an entry names no outputs")
        out.append(rec)
    return out


def _file_tensors(info: CheckpointInfo) -> dict[str, list[Any]]:
    by_file: dict[str, list[Any]] = {os.path.realpath(f): [] for f in info.files}
    for t in info.tensors:
        by_file.setdefault(os.path.realpath(t.file), []).append(t)
    return by_file


def _describes(entry: dict[str, Any], info: CheckpointInfo) -> tuple[bool, str | None]:
    """(whether ``entry`` describes every weights file of ``info``, why it is stale if it names one but
    does not match it)."""
    outs = {o["file"]: o for o in entry["outputs"]}
    by_file = _file_tensors(info)
    matched = 0
    for path, tensors in by_file.items():
        o = outs.get(os.path.basename(path))
        if o is None:
            continue
        digest = layout_digest((t.name, t.dtype, t.shape) for t in tensors)
        nbytes = sum(t.nbytes for t in tensors)
        if (o["tensors"], o["bytes"], o["digest"]) != (len(tensors), nbytes, digest):
            return False, (
                f"{FILE} describes {o['file']} as {o['tensors']} tensors / {o['bytes']} bytes, but the file holds "
                f"{len(tensors)} tensors / {nbytes} bytes (or other names or shapes): the file was replaced after "
                f"ckpt-tool wrote it, so that record is stale and ignored (delete {FILE} or its entry)"
            )
        matched += 1
    return bool(by_file) and matched == len(by_file), None


def attach(info: CheckpointInfo, probe: Probe | None = None) -> None:
    """Find the provenance of ``info`` (and of its companions): safetensors headers first, then the
    provenance file beside the weights. Sets ``info.provenance``; problems become warnings."""
    cache: dict[str, list[dict[str, Any]] | str] = {}
    for target in (info, *info.companions):
        _attach_one(target, probe, cache)


def _attach_one(info: CheckpointInfo, probe: Probe | None, cache: dict[str, Any]) -> None:
    raw = info.metadata.pop(KEY, None)  # shown as the readable record, not as a JSON string row
    texts: list[tuple[str, str]] = []
    if probe is not None:
        for f in info.files:
            try:
                cont = probe.container(f)
            except (CkptError, OSError):
                continue
            t = cont.metadata.get(KEY) if cont.kind == "safetensors" else None
            if isinstance(t, str):
                texts.append((f, t))
    elif isinstance(raw, str):
        texts.append((info.files[0] if info.files else info.path, raw))
    if texts:
        f0, t0 = texts[0]
        try:
            info.provenance = parse_text(t0)
        except BadRecord as exc:
            info.warnings.append(f"ignored the provenance record in the header of {os.path.basename(f0)}: {exc}")
        if len({t for _, t in texts}) > 1:
            info.warnings.append(
                "the files of this checkpoint carry provenance records of different runs: the directory mixes "
                "files of several outputs (check that every shard belongs to the same save)"
            )
        if info.provenance is not None:
            return
    if not info.files:
        return
    directory = os.path.dirname(os.path.realpath(info.files[0]))
    path = Path(directory) / FILE
    if directory not in cache:
        if not os.path.lexists(path):
            cache[directory] = []
        else:
            try:
                cache[directory] = read_file(path)
            except BadRecord as exc:
                cache[directory] = f"ignored {path}: {exc}"
    found = cache[directory]
    if isinstance(found, str):
        if found not in info.warnings:
            info.warnings.append(found)
        return
    for entry in found:
        ok, stale = _describes(entry, info)
        if ok:
            info.provenance = entry
            return
        if stale and stale not in info.warnings:
            info.warnings.append(stale)


# --- reading records: chains and summaries --------------------------------------------------------------


def chain(record: dict[str, Any] | None, role: str = "", depth: int = 0) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Every record of a chain, depth first: (depth, role of the input it belongs to, record)."""
    if not isinstance(record, dict):
        return
    yield depth, role, record
    for inp in record.get("inputs") or []:
        sub = inp.get("provenance") if isinstance(inp, dict) else None
        if isinstance(sub, dict) and sub.get("schema") == SCHEMA:
            yield from chain(sub, str(inp.get("role", "")), depth + 1)


def merged_adapters(record: dict[str, Any] | None) -> set[str]:
    """Fingerprints of every adapter merged anywhere in the chain."""
    out = set()
    for _, _, rec in chain(record):
        merge = rec.get("merge")
        fp = merge.get("adapter_fingerprint") if isinstance(merge, dict) else None
        if isinstance(fp, str):
            out.add(fp)
    return out


def printable(text: Any, limit: int = 300) -> str:
    """A hostile string made safe for a terminal: control characters escaped, length capped."""
    s = str(text)
    s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def summary(record: dict[str, Any]) -> str:
    """One line: "merged from A into B by ckpt-tool 0.1.0"."""
    if record.get("truncated") and "operation" not in record:
        return "(earlier history cut: too deep)"
    tool = record.get("tool") if isinstance(record.get("tool"), dict) else {}
    by = f"by {printable(tool.get('name', '?'), 40)} {printable(tool.get('version', '?'), 40)}"
    inputs = {str(i.get("role")): i for i in record.get("inputs") or [] if isinstance(i, dict)}
    op = str(record.get("operation", "?"))

    def name(role: str) -> str:
        i = inputs.get(role) or {}
        hub = i.get("hub") if isinstance(i.get("hub"), dict) else None
        if hub and hub.get("id"):
            return printable(f"{hub['id']}@{str(hub.get('commit', ''))[:12]}")
        return printable(i.get("path", "?"))

    def what(i: dict[str, Any]) -> str:
        return " ".join(printable(x, 40) for x in (i.get("format"), i.get("adapter_type") or i.get("kind")) if x)

    if op == "merge" and "adapter" in inputs and "base" in inputs:
        line = f"merged from {name('adapter')} into {name('base')} {by}"
        merge = record.get("merge") if isinstance(record.get("merge"), dict) else {}
        hp = merge.get("hyperparameters") if isinstance(merge.get("hyperparameters"), dict) else {}
        notes = []
        lora = merge.get("lora") if isinstance(merge.get("lora"), dict) else {}
        given = [str(x) for x in hp.get("given") or []][:16] if isinstance(hp.get("given"), list) else []
        if given:
            shown = [f"lora_alpha={printable(lora.get('alpha'), 20)}"] if "alpha" in given else []
            flags = [g for g in given if g not in ("alpha", "r")]
            if flags:
                shown.append("targets " + (",".join(printable(g, 20) for g in flags if lora.get(g) is True) or "none"))
            notes.append(" and ".join(shown) + " given on the command line")
        assumed = [str(x) for x in hp.get("assumed") or []][:16] if isinstance(hp.get("assumed"), list) else []
        if assumed:
            notes.append("lora " + ", ".join(printable(x, 20) for x in assumed) + " assumed")
        return line + (f" ({'; '.join(notes)})" if notes else "")
    if op == "convert" and len(inputs) == 1:
        (i,) = inputs.values()
        conv = record.get("convert") if isinstance(record.get("convert"), dict) else {}
        to = f" to {printable(conv['to'], 40)}" if conv.get("to") else ""
        return f"converted from {name(str(i.get('role')))} ({what(i)}){to} {by}"
    paths = ", ".join(f"{printable(r, 20)} {printable(i.get('path', '?'))}" for r, i in inputs.items())
    return f"{printable(op, 64)} of {paths or 'no inputs'} {by}"


def summary_lines(record: dict[str, Any] | None) -> list[str]:
    """The chain as lines: the record itself, then each input's own history, indented."""
    lines = []
    for depth, role, rec in chain(record):
        text = summary(rec)
        label = {"in": "source"}.get(role, role)
        lines.append(text if depth == 0 else "  " * (depth - 1) + f"{printable(label, 20)}: {text}")
    return lines
