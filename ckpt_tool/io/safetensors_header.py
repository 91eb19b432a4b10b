"""A validating safetensors header reader (no torch, no tensor bytes read).

It applies every check of the reference reader (formats.md §1.1) and, unlike
it, rejects duplicate keys: with duplicates, which tensor a loader sees depends
on the JSON parser, so the file is ambiguous and a merge could silently pick
the wrong one.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from ckpt_tool.errors import InvalidFile
from ckpt_tool.model import DTYPE_SIZES, TensorInfo

MAX_HEADER = 100_000_000


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidFile(f"duplicate key {key!r} in safetensors header", "the file is ambiguous; re-save it")
        out[key] = value
    return out


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and validate the header of a safetensors file.

    Returns:
        The tensors in data-offset order (which is file order) and the
        ``__metadata__`` mapping (empty when absent).

    Raises:
        InvalidFile: naming the first problem found, with the offending key.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
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
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except InvalidFile as exc:
        raise InvalidFile(f"{path}: {exc.message}", exc.hint) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidFile(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidFile(f"{path}: safetensors header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidFile(f"{path}: safetensors __metadata__ must map strings to strings")

    data_start = 8 + n
    buffer_len = size - data_start
    tensors: list[tuple[int, int, TensorInfo]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise InvalidFile(f"{path}: tensor {name!r}: header entry is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise InvalidFile(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidFile(f"{path}: tensor {name!r}: invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise InvalidFile(f"{path}: tensor {name!r}: invalid data_offsets {offsets!r}")
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
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
