"""Turn a ``TensorInfo`` into a torch tensor that reads straight from the file.

The merge engine and ``diff`` stream one tensor at a time; the bytes come from
a private (copy-on-write) memory map of the input file, so reading a tensor
costs page cache, not anonymous memory, and nothing ever writes to the input.
One map per file is cached for the life of a ``TensorReader``.

torch is imported lazily: this module sits behind commands that must start fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.io.torchzip import TORCH_DTYPES
from ckpt_tool.limits import MAX_TENSOR_DIMS, MAX_VIEW_EXPANSION_BYTES
from ckpt_tool.model import DTYPE_NAMES, TensorInfo

if TYPE_CHECKING:
    import torch

# Friendly spellings accepted on the command line (--dtype) -> safetensors name.
DTYPE_ALIASES: dict[str, str] = {
    "bf16": "BF16",
    "bfloat16": "BF16",
    "fp16": "F16",
    "f16": "F16",
    "float16": "F16",
    "half": "F16",
    "fp32": "F32",
    "f32": "F32",
    "float32": "F32",
    "float": "F32",
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype name (``"BF16"`` -> ``torch.bfloat16``)."""
    import torch

    try:
        return getattr(torch, DTYPE_NAMES[name])
    except (KeyError, AttributeError):
        raise Unsupported(f"dtype {name} is not supported by this torch") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors dtype name for a torch dtype (inverse of ``torch_dtype``)."""
    try:
        return TORCH_DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise Unsupported(f"dtype {dtype} has no safetensors equivalent") from None


def is_float(name: str) -> bool:
    return name in ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")


def check_view(info: TensorInfo) -> None:
    """Refuse a view that reads outside its storage, or that is far larger than it (stride 0).

    The readers already guarantee this for what they return; it is checked again here because a
    ``TensorInfo`` can be built by any plugin, and ``as_strided`` outside the storage would read
    other tensors' bytes (or fault) without a word.

    Raises:
        InvalidFile: naming the tensor.
    """
    shape = tuple(info.shape)
    stride = info.stride if info.stride is not None else contiguous_stride(shape)
    if len(shape) > MAX_TENSOR_DIMS or len(stride) != len(shape):
        raise InvalidFile(f"{info.file}: tensor {info.name!r}: {len(shape)} dimensions / {len(stride)} strides")
    if info.storage_offset < 0 or any(d < 0 for d in shape) or any(s < 0 for s in stride):
        raise InvalidFile(f"{info.file}: tensor {info.name!r}: negative size, stride or offset")
    dense = 1  # torch computes strides and sizes in int64 (a legal safetensors [0, 2**63] is not)
    for d in shape:
        dense *= max(d, 1)
    if dense > _INT64_MAX or max(stride, default=0) > _INT64_MAX or info.storage_offset > _INT64_MAX:
        raise Unsupported(f"{info.file}: tensor {info.name!r}: shape {shape} does not fit torch's 64-bit sizes")
    numel = info.numel
    if numel == 0:
        return
    extent = info.storage_offset + 1 + sum((d - 1) * s for d, s in zip(shape, stride))
    if extent > info.storage_numel:
        raise InvalidFile(f"{info.file}: tensor {info.name!r} reaches past the end of its storage")
    if (numel - info.storage_numel) * info.itemsize > MAX_VIEW_EXPANSION_BYTES:
        raise InvalidFile(
            f"{info.file}: tensor {info.name!r} is a view of {numel * info.itemsize} bytes over a storage of "
            f"{info.storage_numel * info.itemsize} (limit {MAX_VIEW_EXPANSION_BYTES} bytes of expansion)",
            "re-save it with .contiguous()",
        )


_INT64_MAX = (1 << 63) - 1


class TensorReader:
    """Read-only tensor views over memory-mapped files; one private map per file.

    Example:
        >>> reader = TensorReader()
        >>> t = reader.tensor(info)  # no bytes copied; pages load on first touch
    """

    def __init__(self) -> None:
        self._maps: dict[str, Any] = {}  # realpath -> uint8 tensor over the whole file
        self._views: dict[str, memoryview] = {}  # realpath -> read-only stdlib mmap of the whole file
        self._real: dict[str, str] = {}  # path as given -> realpath (which lstats every component, per call)
        # Files are opened by the path as given, never by its realpath: ``migrate`` hands converters
        # ``/proc/self/fd/N`` links to descriptors it opened without following symlinks, and re-resolving
        # one to a name would read whatever that name points at now. The realpath only dedupes maps.

    def _realpath(self, path: str) -> str:
        key = self._real.get(path)
        if key is None:
            key = self._real[path] = os.path.realpath(path)
        return key

    def _file_bytes(self, path: str) -> torch.Tensor:
        import torch

        key = self._realpath(path)
        if key not in self._maps:
            size = os.path.getsize(path)
            if size == 0:
                self._maps[key] = torch.empty(0, dtype=torch.uint8)
            else:
                # shared=False -> MAP_PRIVATE: a stray in-place op could never reach the file.
                storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=size)
                self._maps[key] = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,), (1,))
        return self._maps[key]

    def raw(self, info: TensorInfo) -> torch.Tensor:
        """The storage bytes of ``info`` as a uint8 tensor (the whole storage, not the view)."""
        data = self._file_bytes(info.file)
        nbytes = info.storage_numel * info.itemsize
        end = info.data_offset + nbytes
        if info.data_offset < 0 or end > data.numel():
            raise InvalidFile(f"{info.file}: tensor {info.name!r} runs past the end of the file", "the file is truncated")
        return data[info.data_offset : end]

    def data(self, info: TensorInfo) -> torch.Tensor:
        """The bytes of a contiguous tensor ``info`` (its own ``nbytes``, not the whole storage), as uint8."""
        start = info.storage_offset * info.itemsize
        return self.raw(info)[start : start + info.nbytes]

    def buffer(self, info: TensorInfo) -> memoryview:
        """The bytes of a contiguous tensor ``info`` as a read-only view of a stdlib memory map.

        The same bytes as ``data`` without importing torch: the engine's byte-copy
        path needs them only as the ``copy_file_range`` fallback and for CRC-32s,
        so a plan that only copies (``split`` into safetensors) never pays the
        second and the ~150 MiB that ``import torch`` costs.
        """
        if info.nbytes == 0:
            return memoryview(b"")
        key = self._realpath(info.file)
        view = self._views.get(key)
        if view is None:
            import mmap

            with open(info.file, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                view = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)) if size else memoryview(b"")
            self._views[key] = view
        begin, end = info.byte_range
        if begin < 0 or end > len(view):
            raise InvalidFile(f"{info.file}: tensor {info.name!r} runs past the end of the file", "the file is truncated")
        return view[begin:end]

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """``info`` as a tensor of its own dtype, shape, stride and storage offset (zero copy when aligned)."""
        import torch

        dtype = torch_dtype(info.dtype)
        check_view(info)
        raw = self.raw(info)
        if info.storage_numel == 0 or info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        if raw.storage_offset() % info.itemsize:
            # Misaligned data (possible in third-party safetensors files): copy to an aligned buffer.
            raw = raw.clone()
        storage = raw.view(dtype)
        stride = info.stride if info.stride is not None else contiguous_stride(info.shape)
        return storage.as_strided(info.shape, stride, storage.storage_offset() + info.storage_offset)

    def close(self) -> None:
        self._maps.clear()
        self._views.clear()  # each map is unmapped when its last view is gone


class Scratch:
    """Reusable buffers for intermediate results of merge math, one per named slot.

    A fresh multi-MiB tensor costs a page fault per 4 KiB on first touch (the
    1 MiB mmap threshold in ``malloc.py`` returns freed blocks to the OS), which
    made allocation half the time of a PEFT linear merge. A slot's buffer grows
    to the largest request and is reused for every later tensor. Never hand a
    scratch view onward as a result: the next request overwrites it. Not
    thread-safe; change functions run on the engine's one compute thread.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, Any] = {}

    def get(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``/``dtype`` backed by slot ``slot``."""
        import torch

        numel = 1
        for n in shape:
            numel *= n
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        buf = self._bufs.get(slot)
        if buf is None or buf.numel() < nbytes:
            self._bufs[slot] = buf = None  # free the old one before allocating the bigger one
            self._bufs[slot] = buf = torch.empty(nbytes, dtype=torch.uint8)
        return buf[:nbytes].view(dtype).view(shape)


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides as torch gives them (a zero-size dimension counts as 1)."""
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(stride))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads and -0.0 included): what "tied" means for stored tensors."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    size = a.element_size()
    if a.dtype.is_floating_point and size in ints:
        return torch.equal(a.contiguous().view(ints[size]), b.contiguous().view(ints[size]))
    return torch.equal(a, b)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of ``t`` in row-major order, as a memoryview (no copy when ``t`` is contiguous)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    flat = t.reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")
