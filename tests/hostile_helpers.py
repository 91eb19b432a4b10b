"""Builders of hostile checkpoints, made at test time from real ``torch.save`` output.

``craft_pickle`` writes a ``data.pkl`` the way torch.save does (the real
``torch._utils`` rebuild functions and storage classes are pickled by name,
storages through persistent ids) but with fields an attacker chooses;
``rezip`` puts it into a copy of a real torch.save archive in place of the
original ``data.pkl``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch


class Storage:
    """A persistent id ``("storage", stype, key, location, numel)`` as torch.save writes it."""

    def __init__(self, key: Any, stype: Any, numel: Any, location: Any = "cpu") -> None:
        self.key, self.stype, self.numel, self.location = key, stype, numel, location


class Tensor:
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``, optionally followed by
    BUILD with ``state`` (pickle emits BUILD for the third item of a reduce tuple)."""

    def __init__(self, storage: Storage, offset: Any, size: Any, stride: Any, *, state: Any = None,
                 fn: Any = None, extra: tuple[Any, ...] = (), requires_grad: Any = False) -> None:
        self.args = (storage, offset, size, stride, requires_grad, collections.OrderedDict(), *extra)
        self.state, self.fn = state, fn or torch._utils._rebuild_tensor_v2

    def __reduce__(self) -> Any:
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


class Param:
    """``_rebuild_parameter(data, requires_grad, hooks)`` (+ BUILD ``state``)."""

    def __init__(self, data: Any, *, state: Any = None, fn: Any = None, extra: tuple[Any, ...] = ()) -> None:
        self.data, self.state, self.extra = data, state, extra
        self.fn = fn or torch._utils._rebuild_parameter

    def __reduce__(self) -> Any:
        args = (self.data, False, collections.OrderedDict(), *self.extra)
        return (self.fn, args) if self.state is None else (self.fn, args, self.state)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            return ("storage", obj.stype, obj.key, obj.location, obj.numel)
        return None


def craft_pickle(obj: Any, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def base_zip(path: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A real torch.save archive (storages ``data/0``, ``data/1``...) to graft hostile pickles onto."""
    torch.save(tensors or {"a": torch.arange(16, dtype=torch.float32), "b": torch.arange(4, dtype=torch.float32)}, path)
    return path


def rezip(src: Path, dst: Path, pkl: bytes | None = None, *, compress: set[str] | None = None,
          extra: dict[str, bytes] | None = None) -> Path:
    """Copy archive ``src`` to ``dst`` with ``data.pkl`` replaced by ``pkl`` (records whose basename is in
    ``compress`` are deflated; ``extra`` adds records, relative to the top folder)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        top = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl") and pkl is not None:
                data = pkl
            method = zipfile.ZIP_DEFLATED if compress and item.filename.split("/")[-1] in compress else zipfile.ZIP_STORED
            zout.writestr(item.filename, data, compress_type=method)
        for name, data in (extra or {}).items():
            zout.writestr(f"{top}/{name}", data)
    return dst


def set_encrypted_flag(path: Path, member_suffix: str) -> None:
    """Set the "encrypted" general-purpose flag of a record in both its local and central headers."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
        name = info.filename.encode()
    local = info.header_offset
    raw[local + 6] |= 0x01
    pos = raw.find(b"PK\x01\x02" + b"", 0)
    while pos >= 0:
        (name_len,) = struct.unpack("<H", raw[pos + 28 : pos + 30])
        if raw[pos + 46 : pos + 46 + name_len] == name:
            raw[pos + 8] |= 0x01
            break
        pos = raw.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(raw))


def torch_rejects(path: Path) -> bool:
    """Whether ``torch.load(weights_only=True)`` (CPU, like ckpt-tool's readers) refuses the file."""
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        return True
    return False
