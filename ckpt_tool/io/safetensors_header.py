"""A validating safetensors header reader (no torch, no tensor bytes read).

It applies every check of the reference reader (formats.md §1.1) and, unlike
it, rejects duplicate keys: with duplicates, which tensor a loader sees depends
on the JSON parser, so the file is ambiguous and a merge could silently pick
the wrong one.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from typing import Any

from ckpt_tool.errors import InvalidFile
from ckpt_tool.io.regular import open_regular
from ckpt_tool.limits import MAX_SAFETENSORS_HEADER_BYTES, MAX_SAFETENSORS_TENSORS
from ckpt_tool.model import DTYPE_SIZES, TensorInfo

MAX_HEADER = MAX_SAFETENSORS_HEADER_BYTES
_U64_MAX = (1 << 64) - 1
# A JSON \\u escape of a UTF-16 surrogate: Python decodes a lone one into an unencodable str,
# the reference (Rust/serde) parser refuses it. Only when one is present is every string checked.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


class _NegativeZero:
    """What ``-0`` parses to: serde refuses it as an unsigned integer, Python's int() would make it 0."""

    def __repr__(self) -> str:
        return "-0"


_NEG_ZERO = _NegativeZero()


def _parse_int(text: str) -> Any:
    return _NEG_ZERO if text == "-0" else int(text)


def _no_constant(text: str) -> Any:
    """``NaN`` / ``Infinity`` literals: Python's json accepts them, JSON (and serde, safetensors' parser) does not."""
    raise ValueError(f"{text} is not a JSON value")


def _parse_float(text: str) -> float:
    """serde refuses a number past f64's range ("number out of range"); Python would make it inf."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidFile(f"duplicate key {key!r} in safetensors header", "the file is ambiguous; re-save it")
        out[key] = value
    return out


def _is_u64(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _U64_MAX  # not bool: JSON true is not a number


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and validate the header of a safetensors file.

    Every file the reference reader (safetensors 0.8.0, ``safe_open``) rejects is rejected, with the
    same rules: unsigned 64-bit shapes and offsets (JSON ``true`` and ``-0`` are not numbers), the
    element count computed with overflow checks in order, ``__metadata__`` a string-to-string map,
    no lone UTF-16 surrogates, contiguous in-order offsets covering the data exactly. Stricter: no
    duplicate keys, ``__metadata__: null`` refused, a header size and tensor count cap (limits.py).

    Returns:
        The tensors in data-offset order (which is file order) and the
        ``__metadata__`` mapping (empty when absent).

    Raises:
        InvalidFile: naming the first problem found, with the offending key.
    """
    path = os.fspath(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(8)
        if len(raw) < 8:
            raise InvalidFile(f"{path}: truncated safetensors file ({size} bytes)", "re-save or re-download it")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise InvalidFile(f"{path}: safetensors header length {n} exceeds the {MAX_HEADER} byte limit")
        if 8 + n > size:
            raise InvalidFile(
                f"{path}: safetensors header length {n} is larger than the file ({size} bytes)",
                "the file is truncated; re-save or re-download it",
            )
        blob = fh.read(n)
    if len(blob) != n:
        raise InvalidFile(f"{path}: safetensors file shrank while being read")
    # Every tensor entry has a "data_offsets" key: counting them (C speed) refuses a header with too
    # many tensors before the much slower parse. (Escaped spellings are caught after parsing.)
    declared = blob.count(b'"data_offsets"')
    if declared > MAX_SAFETENSORS_TENSORS:
        raise InvalidFile(f"{path}: safetensors header declares {declared} tensors (limit {MAX_SAFETENSORS_TENSORS})")
    try:
        header = json.loads(
            blob.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_no_constant,
        )
    except InvalidFile as exc:
        raise InvalidFile(f"{path}: {exc.message}", exc.hint) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidFile(f"{path}: safetensors header is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidFile(f"{path}: safetensors header nests too deeply (not a safetensors header)") from None
    if not isinstance(header, dict):
        raise InvalidFile(f"{path}: safetensors header is not a JSON object")
    if _SURROGATE_ESCAPE.search(blob) and _has_lone_surrogate(header):
        raise InvalidFile(f"{path}: safetensors header holds a lone UTF-16 surrogate (invalid Unicode)")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidFile(f"{path}: safetensors __metadata__ must map strings to strings, not {metadata!r:.60}")
    if len(header) > MAX_SAFETENSORS_TENSORS:
        raise InvalidFile(f"{path}: safetensors header declares {len(header)} tensors (limit {MAX_SAFETENSORS_TENSORS})")

    data_start = 8 + n
    buffer_len = size - data_start
    tensors: list[tuple[int, int, TensorInfo]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise InvalidFile(f"{path}: tensor {name!r}: header entry is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise InvalidFile(f"{path}: tensor {name!r}: unknown dtype {dtype!r:.40}")
        if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
            raise InvalidFile(f"{path}: tensor {name!r}: invalid shape {shape!r:.80}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
            raise InvalidFile(f"{path}: tensor {name!r}: invalid data_offsets {offsets!r:.80}")
        begin, end = offsets
        if begin > end:
            raise InvalidFile(f"{path}: tensor {name!r}: invalid data_offsets {offsets!r:.80}")
        numel = 1
        for d in shape:  # the reference reader's checked_mul fold: [2**40, 2**40, 0] overflows before the 0
            numel *= d
            if numel > _U64_MAX:
                raise InvalidFile(f"{path}: tensor {name!r}: element count of shape {shape!r:.80} overflows")
        if numel * DTYPE_SIZES[dtype] * 8 > _U64_MAX:
            raise InvalidFile(f"{path}: tensor {name!r}: byte size of shape {shape!r:.80} overflows")
        if end - begin != numel * DTYPE_SIZES[dtype]:
            raise InvalidFile(
                f"{path}: tensor {name!r}: {end - begin} bytes of data for shape {shape} {dtype} "
                f"(expected {numel * DTYPE_SIZES[dtype]})"
            )
        if end > buffer_len:
            raise InvalidFile(
                f"{path}: tensor {name!r}: data_offsets {offsets} run past the end of the file",
                "the file is truncated; re-save or re-download it",
            )
        info = TensorInfo(
            name=name,
            dtype=dtype,
            shape=tuple(shape),
            file=path,
            data_offset=data_start + begin,
            storage_numel=numel,
        )
        tensors.append((begin, end, info))

    tensors.sort(key=lambda item: (item[0], item[1]))
    cursor = 0
    for begin, end, info in tensors:
        if begin != cursor:
            what = "gap before" if begin > cursor else "overlapping"
            raise InvalidFile(f"{path}: tensor {info.name!r}: {what} data (offset {begin}, expected {cursor})")
        cursor = end
    if cursor != buffer_len:
        raise InvalidFile(
            f"{path}: {buffer_len - cursor} trailing bytes after the last tensor",
            "the file was appended to or is corrupt",
        )
    return [info for _, _, info in tensors], dict(metadata)
