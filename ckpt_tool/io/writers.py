"""Streaming checkpoint writers: one tensor at a time, nothing buffered but the tensor at hand.

Every output's names, dtypes and shapes are known before the first byte is
written (the merge plan says them), so headers go first and data follows in
order:

* ``SafetensorsWriter`` — header-first safetensors (JSON padded with spaces to a
  multiple of 8, ``{"format": "pt"}`` metadata), byte-compatible with what
  ``safetensors.torch.load_file`` reads.
* ``TorchZipWriter`` — a ``torch.save``-compatible zip written record by record:
  ``data.pkl`` (pickle protocol 2 built from torch's real ``_rebuild_tensor_v2``
  and storage classes, so ``torch.load(weights_only=True)`` accepts it), then
  one 64-byte aligned storage record per tensor (so ``torch.load(mmap=True)``
  maps it), with real CRC-32s and zip64 records past 4 GiB.
* sharded safetensors + ``model.safetensors.index.json`` past ``max_shard_size``.

All files go through ``io.atomic.atomic_write`` and are renamed into place only
after every tensor was written: an exception (or Ctrl-C) anywhere leaves no
output and no temp file. Unchanged tensors can be copied file-to-file with
``os.copy_file_range`` (no trip through user space).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import pickle
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ckpt_tool.errors import UsageError
from ckpt_tool.io.atomic import atomic_write
from ckpt_tool.model import DTYPE_SIZES, tensor_nbytes

if TYPE_CHECKING:
    import torch

ALIGN = 64
SAFETENSORS_INDEX = "model.safetensors.index.json"
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor, known before writing: name, safetensors dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


#: A byte range to copy: (source fd, offset, bytes, the same bytes mapped or None) — see ``copy_range``.
Piece = tuple[int, int, int, "memoryview | None"]


class WriteError(RuntimeError):
    """The engine fed a writer something other than what it announced (a bug, not user input)."""


def pwrite_all(fd: int, data: memoryview | bytes, pos: int) -> None:
    """Write all of ``data`` at ``pos`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], pos + done)
        if n <= 0:
            raise OSError("short write")
        done += n


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_pos: int, nbytes: int, fallback: memoryview | None) -> None:
    """Copy ``nbytes`` of ``src_fd`` at ``src_offset`` to ``dst_fd`` at ``dst_pos`` without Python buffers.

    ``copy_file_range`` keeps the bytes in the kernel (and shares extents on
    filesystems that can); where it is unavailable (EXDEV, ENOSYS, EINVAL on some
    filesystems) the mapped ``fallback`` view or ``pread`` chunks are written.
    """
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < nbytes:
                n = os.copy_file_range(src_fd, dst_fd, nbytes - done, src_offset + done, dst_pos + done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
                raise
            # EXDEV, ENOSYS, EINVAL, EOPNOTSUPP: fall back below
    if done < nbytes:
        if fallback is not None:
            pwrite_all(dst_fd, fallback[done:nbytes], dst_pos + done)
        else:
            while done < nbytes:
                chunk = os.pread(src_fd, min(nbytes - done, 1 << 24), src_offset + done)
                if not chunk:
                    raise WriteError("source file ended early while copying")
                pwrite_all(dst_fd, chunk, dst_pos + done)
                done += len(chunk)


class _Writer:
    """Common bookkeeping for positional writers.

    Every output tensor's place in the file is fixed when the writer opens
    (names, dtypes and shapes are announced up front), so tensors may arrive in
    any order — a step that writes into several files at once never has to
    wait for another — but each exactly once and with the announced size.
    Writes are positional (``pwrite``), so a writer can be fed from the
    engine's write-behind thread without a shared file position.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self._index = {s.name: i for i, s in enumerate(self.specs)}
        if len(self._index) != len(self.specs):
            raise WriteError("duplicate output tensor names")
        self._written: set[int] = set()

    def _slot(self, name: str, nbytes: int) -> int:
        i = self._index.get(name)
        if i is None:
            raise WriteError(f"unexpected tensor {name!r}: it was not announced")
        if i in self._written:
            raise WriteError(f"tensor {name!r} written twice")
        if self.specs[i].nbytes != nbytes:
            raise WriteError(f"tensor {name!r}: {nbytes} bytes, announced {self.specs[i].nbytes}")
        self._written.add(i)
        return i

    def check_complete(self) -> None:
        if len(self._written) != len(self.specs):
            missing = next(s.name for i, s in enumerate(self.specs) if i not in self._written)
            raise WriteError(f"only {len(self._written)} of {len(self.specs)} tensors written (missing: {missing!r})")

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (any layout; stored row-major in its own dtype) in ``name``'s place."""
        from ckpt_tool.io.tensors import dtype_name, tensor_bytes

        i = self._index.get(name)
        if i is not None:
            spec = self.specs[i]
            if dtype_name(tensor.dtype) != spec.dtype:
                raise WriteError(f"tensor {name!r} is {tensor.dtype}, announced {spec.dtype}")
            if tuple(tensor.shape) != spec.shape:
                raise WriteError(f"tensor {name!r} has shape {tuple(tensor.shape)}, announced {spec.shape}")
        self.write_bytes(name, tensor_bytes(tensor))

    def write_bytes(self, name: str, data: memoryview | bytes) -> None:
        raise NotImplementedError

    def copy(self, name: str, src_fd: int, src_offset: int, nbytes: int, view: memoryview | None = None) -> None:
        """Copy ``nbytes`` from an open file into ``name``'s place; ``view`` (the same bytes, mapped) serves checksums."""
        self.copy_ranges(name, [(src_fd, src_offset, nbytes, view)])

    def copy_ranges(self, name: str, pieces: Sequence[Piece]) -> None:
        """``copy`` of a tensor made of several byte ranges (of open files), written one after the other."""
        raise NotImplementedError


class SafetensorsWriter(_Writer):
    """Header-first safetensors writer over an open binary file (data in announced order, any write order)."""

    def __init__(self, fh: IO[bytes], specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> None:
        super().__init__(specs)
        fh.flush()
        self.fd = fh.fileno()
        header: dict[str, Any] = {}
        if metadata is not None:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        rel: list[int] = []
        for s in self.specs:
            header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
            rel.append(offset)
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        start = fh.tell()
        pwrite_all(self.fd, struct.pack("<Q", len(raw)) + raw, start)
        data_start = start + 8 + len(raw)
        self.offsets = [data_start + r for r in rel]
        self.data_bytes = offset
        os.ftruncate(self.fd, data_start + offset)  # the final size at once: no sparse tail to fill in order

    def write_bytes(self, name: str, data: memoryview | bytes) -> None:
        i = self._slot(name, len(data))
        pwrite_all(self.fd, data, self.offsets[i])

    def copy_ranges(self, name: str, pieces: Sequence[Piece]) -> None:
        pos = self.offsets[self._slot(name, sum(p[2] for p in pieces))]
        for src_fd, src_offset, nbytes, view in pieces:
            copy_range(src_fd, src_offset, self.fd, pos, nbytes, view)
            pos += nbytes


# --- torch zip -------------------------------------------------------------------------------------

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_EOCD64_LOC = struct.Struct("<IIQI")
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1  # 1980-01-01 00:00, reproducible output


@dataclass
class _Entry:
    name: bytes
    header_offset: int
    data_offset: int
    size: int
    zip64: bool
    extra: bytes
    crc: int = 0


class _ZipLayout:
    """A stored-only zip whose every record's place is fixed up front: aligned data, CRCs patched, zip64.

    Local headers are written when a record is added (CRC 0); ``set_crc``
    patches it after the record's data is in place; ``finish`` writes the
    central directory after the last record.
    """

    def __init__(self, fd: int, start: int, force_zip64: bool = False) -> None:
        self.fd = fd
        self.pos = start
        self.entries: list[_Entry] = []
        self.force_zip64 = force_zip64

    def add(self, name: str, size: int) -> _Entry:
        offset = self.pos
        bname = name.encode("utf-8")
        zip64 = self.force_zip64 or size >= _U32
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        start = offset + _LOCAL.size + len(bname) + len(extra)
        pad = -start % ALIGN
        if pad and pad < 4:
            pad += ALIGN  # an extra field needs at least its 4-byte header
        if pad:
            extra += struct.pack("<HH", 0x4246, pad - 4) + b"Z" * (pad - 4)  # "FB" padding, as torch writes
        entry = _Entry(bname, offset, offset + _LOCAL.size + len(bname) + len(extra), size, zip64, extra)
        self._write_local(entry)
        self.entries.append(entry)
        self.pos = entry.data_offset + size
        return entry

    def _write_local(self, e: _Entry) -> None:
        head = _LOCAL.pack(
            0x04034B50, 45 if e.zip64 else 20, 0, 0, _DOS_TIME, _DOS_DATE, e.crc,
            _U32 if e.zip64 else e.size, _U32 if e.zip64 else e.size, len(e.name), len(e.extra),
        )
        pwrite_all(self.fd, head + e.name + e.extra, e.header_offset)

    def set_crc(self, e: _Entry, crc: int) -> None:
        e.crc = crc & _U32
        pwrite_all(self.fd, struct.pack("<I", e.crc), e.header_offset + 14)

    def record(self, name: str, data: bytes) -> None:
        e = self.add(name, len(data))
        pwrite_all(self.fd, data, e.data_offset)
        self.set_crc(e, zlib.crc32(data))

    def finish(self) -> None:
        cd_start = self.pos
        out = bytearray()
        for e in self.entries:
            big_size = self.force_zip64 or e.size >= _U32
            big_off = self.force_zip64 or e.header_offset >= _U32
            extra = b""
            if big_size or big_off:
                fields = (struct.pack("<QQ", e.size, e.size) if big_size else b"") + (
                    struct.pack("<Q", e.header_offset) if big_off else b""
                )
                extra = struct.pack("<HH", 1, len(fields)) + fields
            version = 45 if extra else 20
            out += _CENTRAL.pack(
                0x02014B50, version, version, 0, 0, _DOS_TIME, _DOS_DATE, e.crc,
                _U32 if big_size else e.size, _U32 if big_size else e.size,
                len(e.name), len(extra), 0, 0, 0, 0, _U32 if big_off else e.header_offset,
            )
            out += e.name + extra
        cd_size = len(out)
        cd_end = cd_start + cd_size
        n = len(self.entries)
        if self.force_zip64 or n >= 0xFFFF or cd_start >= _U32 or cd_size >= _U32:
            out += _EOCD64.pack(0x06064B50, _EOCD64.size - 12, 45, 45, 0, 0, n, n, cd_size, cd_start)
            out += _EOCD64_LOC.pack(0x07064B50, 0, cd_end, 1)
            out += _EOCD.pack(0x06054B50, 0, 0, 0xFFFF, 0xFFFF, _U32, _U32, 0)
        else:
            out += _EOCD.pack(0x06054B50, 0, 0, n, n, cd_size, cd_start, 0)
        pwrite_all(self.fd, bytes(out), cd_start)
        self.pos = cd_start + len(out)
        os.ftruncate(self.fd, self.pos)


class _StorageRef:
    def __init__(self, key: str, storage_type: Any, numel: int) -> None:
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _TensorRef:
    """Pickles exactly as ``torch.save`` pickles a CPU tensor.

    dtypes with a legacy typed storage class (``torch.BFloat16Storage``...) use
    ``_rebuild_tensor_v2``; newer ones (float8, uint16/32/64) use
    ``_rebuild_tensor_v3`` over a byte-sized ``UntypedStorage`` plus the dtype, as torch does.
    """

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...], dtype: str) -> None:
        self.storage, self.shape, self.dtype = storage, shape, dtype

    def __reduce__(self) -> Any:
        import collections

        import torch

        from ckpt_tool.io.tensors import contiguous_stride, torch_dtype

        args = (self.storage, 0, tuple(self.shape), contiguous_stride(self.shape), False, collections.OrderedDict())
        if self.storage.storage_type is torch.storage.UntypedStorage:
            return (torch._utils._rebuild_tensor_v3, (*args, torch_dtype(self.dtype)))
        return (torch._utils._rebuild_tensor_v2, args)


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def _storage_type(dtype: str) -> Any:
    """torch's legacy storage class for ``dtype``, or ``UntypedStorage`` when it has none."""
    import torch

    from ckpt_tool.io.torchzip import DTYPE_STORAGES

    cls = getattr(torch, DTYPE_STORAGES.get(dtype, ""), None)
    return cls if cls is not None else torch.storage.UntypedStorage


#: what a top-level entry beside the state dict may hold: values ``torch.load(weights_only=True)`` gives
#: back exactly as they were (no ``bytes``: protocol 2 pickles them as a ``codecs.encode`` call torch refuses)
_PLAIN_SCALARS = (type(None), bool, int, float, str)
_PLAIN_CONTAINERS = (dict, collections.OrderedDict, list, tuple)


def is_plain(value: Any, _depth: int = 0) -> bool:
    """True for ``None``/bool/int/float/str and dicts, lists and tuples of them (no tensors, no torch types,
    no object state, no cycles): what the torch writer re-pickles beside the state dict exactly."""
    if type(value) in _PLAIN_SCALARS:
        return True
    if type(value) not in _PLAIN_CONTAINERS or _depth > 32 or getattr(value, "__dict__", None):
        return False
    items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else list(value)
    return all(is_plain(v, _depth + 1) for v in items)


def build_torch_pickle(
    specs: Sequence[TensorSpec], wrapper: str | None = None, extras: dict[Any, Any] | None = None
) -> bytes:
    """``data.pkl`` for a state dict of ``specs`` (storage keys "0".."N-1"), optionally ``{wrapper: sd}``.

    ``extras`` (with a wrapper): the other top-level entries, in order; the state dict takes the place of
    the wrapper key's placeholder value when ``extras`` holds one, else it comes first.
    """
    import io

    import torch

    sd: dict[str, Any] = {}
    for i, s in enumerate(specs):
        stype = _storage_type(s.dtype)
        numel = s.nbytes if stype is torch.storage.UntypedStorage else s.nbytes // DTYPE_SIZES[s.dtype]
        sd[s.name] = _TensorRef(_StorageRef(str(i), stype, numel), s.shape, s.dtype)
    obj: Any = {wrapper: sd} if wrapper else sd
    if extras is not None:
        if not wrapper or not is_plain(extras):
            raise WriteError("top-level extras need a wrapper and plain values only")
        top = extras if wrapper in extras else {wrapper: None, **extras}
        obj = {k: sd if k == wrapper else v for k, v in top.items()}
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def archive_name(dest: str | os.PathLike[str]) -> str:
    """The zip's top folder, as torch names it: the file name without its last suffix."""
    stem = os.path.splitext(os.path.basename(os.fspath(dest)))[0]
    ok = stem and all(c.isalnum() or c in "._-" for c in stem) and not stem.startswith(".")
    return stem if ok else "archive"


class TorchZipWriter(_Writer):
    """Write a ``torch.save``-compatible checkpoint; storage records in announced order, written in any order.

    The records are laid out as ``torch.save`` lays them out (``data.pkl``,
    ``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/0`` …,
    ``version``, ``.data/serialization_id``), each storage 64-byte aligned so
    ``torch.load(mmap=True)`` maps it.
    """

    def __init__(
        self,
        fh: IO[bytes],
        specs: Sequence[TensorSpec],
        archive: str = "archive",
        wrapper: str | None = None,
        force_zip64: bool = False,
        extras: dict[Any, Any] | None = None,
    ) -> None:
        super().__init__(specs)
        fh.flush()
        self.fd = fh.fileno()
        self.zip = _ZipLayout(self.fd, fh.tell(), force_zip64=force_zip64)
        self.top = archive
        self.zip.record(f"{archive}/data.pkl", build_torch_pickle(self.specs, wrapper, extras))
        self.zip.record(f"{archive}/.format_version", b"1")
        self.zip.record(f"{archive}/.storage_alignment", str(ALIGN).encode())
        self.zip.record(f"{archive}/byteorder", b"little")
        self.records = [self.zip.add(f"{archive}/data/{i}", s.nbytes) for i, s in enumerate(self.specs)]
        self.zip.record(f"{archive}/version", b"3\n")
        self.serial = self.zip.add(f"{archive}/.data/serialization_id", 40)  # filled in by check_complete

    def write_bytes(self, name: str, data: memoryview | bytes) -> None:
        e = self.records[self._slot(name, len(data))]
        pwrite_all(self.fd, data, e.data_offset)
        self.zip.set_crc(e, zlib.crc32(data))

    def copy_ranges(self, name: str, pieces: Sequence[Piece]) -> None:
        e = self.records[self._slot(name, sum(p[2] for p in pieces))]
        pos, crc = e.data_offset, 0
        for src_fd, src_offset, nbytes, view in pieces:
            copy_range(src_fd, src_offset, self.fd, pos, nbytes, view)
            pos += nbytes
            if view is not None:
                crc = zlib.crc32(view[:nbytes], crc)
                continue
            done = 0
            while done < nbytes:
                chunk = os.pread(src_fd, min(nbytes - done, 1 << 24), src_offset + done)
                if not chunk:
                    raise WriteError("source file ended early while computing its checksum")
                crc = zlib.crc32(chunk, crc)
                done += len(chunk)
        self.zip.set_crc(e, crc)

    def check_complete(self) -> None:
        super().check_complete()
        self._write_serialization_id()
        self.zip.finish()

    def _write_serialization_id(self) -> None:
        """40 digits derived from the record names and their CRC-32s, as torch derives its own (not the same
        digits): the same tensors give the same file, so a resumed ``migrate`` reproduces what it journaled."""
        import hashlib

        h = hashlib.sha256()
        for e in self.zip.entries:
            if e is not self.serial:
                h.update(e.name + b"\0" + e.crc.to_bytes(4, "little"))
        serial = str(int.from_bytes(h.digest(), "big") % 10**40).zfill(40).encode()
        pwrite_all(self.fd, serial, self.serial.data_offset)
        self.zip.set_crc(self.serial, zlib.crc32(serial))


# --- opening writers -------------------------------------------------------------------------------


@contextlib.contextmanager
def open_safetensors(
    dest: str | os.PathLike[str], specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None
) -> Iterator[SafetensorsWriter]:
    """A safetensors file at ``dest``, renamed into place only when every tensor was written."""
    with atomic_write(dest) as fh:
        writer = SafetensorsWriter(fh, specs, {"format": "pt"} if metadata is None else metadata)
        yield writer
        writer.check_complete()


@contextlib.contextmanager
def open_torch(
    dest: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    wrapper: str | None = None,
    force_zip64: bool = False,
    extras: dict[Any, Any] | None = None,
) -> Iterator[TorchZipWriter]:
    """A torch zip checkpoint at ``dest`` (a bare state dict, or ``{wrapper: sd}``, with ``extras`` beside it)."""
    with atomic_write(dest) as fh:
        writer = TorchZipWriter(fh, specs, archive_name(dest), wrapper, force_zip64, extras)
        yield writer
        writer.check_complete()


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"500MiB"`` -> 524_288_000, ``"1234"`` -> 1234, ``"0"`` -> 0 (HF conventions;
    0 means "no limit": one file).

    Exact decimal arithmetic (``"1.1GB"`` is 1_100_000_000, not a float's rounding of it); ``inf``,
    ``nan``, ``1e400`` and sizes beyond 2**63 bytes are refused as bad option values.

    Raises:
        UsageError: not a non-negative finite size (exit 2).
    """
    from decimal import Decimal, InvalidOperation

    units = {
        "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
        "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    }
    bad = UsageError(f"not a size: {text!r}", "use e.g. 5GB, 500MB, 2GiB")
    s = str(text).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num) :]
    if unit not in units or not num or len(num) > 40:
        raise bad
    try:
        value = Decimal(num)
    except (InvalidOperation, ValueError):
        raise bad from None
    if not value.is_finite() or value < 0 or value.adjusted() > 30:
        raise bad
    size = int(value * units[unit])
    if not 0 <= size < 2**63 or (size == 0 and value != 0):
        raise bad
    return size


def plan_shards(specs: Sequence[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def shard_names(count: int, prefix: str = "model", ext: str = "safetensors") -> list[str]:
    if count == 1:
        return [f"{prefix}.{ext}"]
    return [f"{prefix}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)]


class ShardedSafetensorsWriter(_Writer):
    """Routes each tensor to the shard that holds it; every shard is open from the start (any write order)."""

    def __init__(
        self,
        out_dir: Path,
        specs: Sequence[TensorSpec],
        max_shard_size: int,
        stack: contextlib.ExitStack,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(specs)
        self.groups = plan_shards(self.specs, max_shard_size)
        self.names = shard_names(len(self.groups))
        self.files = [out_dir / n for n in self.names]
        self.weight_map = {s.name: self.names[i] for i, g in enumerate(self.groups) for s in g}
        self.shards = [stack.enter_context(open_safetensors(f, g, metadata)) for f, g in zip(self.files, self.groups)]
        self._shard_of = {s.name: self.shards[i] for i, g in enumerate(self.groups) for s in g}

    def write_bytes(self, name: str, data: memoryview | bytes) -> None:
        self._slot(name, len(data))
        self._shard_of[name].write_bytes(name, data)

    def copy(self, name: str, src_fd: int, src_offset: int, nbytes: int, view: memoryview | None = None) -> None:
        self._slot(name, nbytes)
        self._shard_of[name].copy(name, src_fd, src_offset, nbytes, view)

    def copy_ranges(self, name: str, pieces: Sequence[Piece]) -> None:
        self._slot(name, sum(p[2] for p in pieces))
        self._shard_of[name].copy_ranges(name, pieces)

    def check_complete(self) -> None:
        super().check_complete()
        for shard in self.shards:
            shard.check_complete()


@contextlib.contextmanager
def open_sharded_safetensors(
    out_dir: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    max_shard_size: int,
    metadata: dict[str, str] | None = None,
) -> Iterator[ShardedSafetensorsWriter]:
    """``model.safetensors``, or ``model-0000i-of-0000K.safetensors`` + index when larger than ``max_shard_size``.

    Every shard and the index stay temp files until the last tensor is written;
    then the shards are renamed into place and the index last (the index's
    temp file is entered first, so the stack publishes it last), so a failure
    leaves nothing behind and a reader never sees an index without its shards.
    """
    out = Path(out_dir)
    with contextlib.ExitStack() as stack:
        groups = plan_shards(specs, max_shard_size)
        index_fh = stack.enter_context(atomic_write(out / SAFETENSORS_INDEX)) if len(groups) > 1 else None
        writer = ShardedSafetensorsWriter(out, specs, max_shard_size, stack, metadata)
        if index_fh is not None:
            index_fh.write(index_json(writer.specs, writer.weight_map))
        yield writer
        writer.check_complete()


def index_json(specs: Sequence[TensorSpec], weight_map: dict[str, str]) -> bytes:
    """``model.safetensors.index.json`` as ``save_pretrained`` writes it (total_size = tensor bytes)."""
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(index, indent=2) + "\n").encode()


def output_files(out_dir: str | os.PathLike[str], specs: Sequence[TensorSpec], max_shard_size: int) -> list[Path]:
    """The files ``open_sharded_safetensors`` would create (for --dry-run and overwrite checks)."""
    groups = plan_shards(specs, max_shard_size)
    files = [Path(out_dir) / n for n in shard_names(len(groups))]
    if len(groups) > 1:
        files.append(Path(out_dir) / SAFETENSORS_INDEX)
    return files
