"""Read torch zip checkpoints (``.pth/.bin/.pt``) without torch and without running code.

``data.pkl`` is replayed by an unpickler whose ``find_class`` admits only the
handful of globals a state dict needs (tensor/parameter rebuild functions,
storage types, ``OrderedDict``, dtypes, ``torch.Size``) and returns inert
stand-ins for them, so nothing from the file is ever imported or called.
Python's own unpickler does the opcode work, so protocols 2–5 (FRAME,
STACK_GLOBAL, MEMOIZE, …) are handled, including the 4/5 files that
``torch.load(weights_only=True)`` rejects.

Storage bytes are never read: their offsets come from the zip directory and
local headers, and each storage's size is checked against what the pickle says.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

from ckpt_tool.errors import InvalidFile, UnsafeFile, Unsupported
from ckpt_tool.model import DTYPE_SIZES, TensorInfo

# torch storage class name -> safetensors dtype name
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
}
DTYPE_STORAGES = {v: k for k, v in STORAGE_DTYPES.items()}

# torch dtype attribute name -> safetensors dtype name (dtypes can appear as values)
TORCH_DTYPES: dict[str, str] = {
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
    "double": "F64",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}

MAX_PICKLE_BYTES = 1 << 30


@dataclass(frozen=True)
class StorageType:
    dtype: str


@dataclass(frozen=True)
class DType:
    """Stand-in for a ``torch.dtype`` value found in the pickle."""

    name: str


@dataclass
class StorageRef:
    key: str
    dtype: str
    numel: int
    location: str


@dataclass
class TensorRef:
    """Stand-in for a tensor: enough to locate and describe it."""

    storage: StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str | None = None  # element dtype when it differs from the storage's (``_rebuild_tensor_v3``)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise InvalidFile("tensor rebuilt from something that is not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise InvalidFile(f"invalid storage offset {storage_offset!r}")
    shape, strides = tuple(size), tuple(stride)
    if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(
        isinstance(s, int) and s >= 0 for s in strides
    ):
        raise InvalidFile(f"invalid tensor size {size!r} / stride {stride!r}")
    if len(shape) != len(strides):
        raise InvalidFile(f"tensor size {size!r} and stride {stride!r} disagree")
    return TensorRef(storage, storage_offset, shape, strides)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_rest: Any
) -> TensorRef:
    """torch writes dtypes without a typed storage class (float8, uint16/32/64) as a byte storage plus a dtype."""
    if not isinstance(dtype, DType):
        raise InvalidFile(f"tensor rebuilt with an invalid dtype {dtype!r:.40}")
    ref = _rebuild_tensor(storage, storage_offset, size, stride)
    ref.dtype = TORCH_DTYPES[dtype.name]
    return ref


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _torch_size(*args: Any) -> tuple[int, ...]:
    return tuple(args[0]) if args else ()


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    return collections.OrderedDict(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch.storage", "UntypedStorage"): StorageType("U8"),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
for _name, _dt in STORAGE_DTYPES.items():
    _ALLOWED[("torch", _name)] = StorageType(_dt)
for _name in TORCH_DTYPES:
    _ALLOWED[("torch", _name)] = DType(_name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFile(
                f"refusing to load global '{module}.{name}' from the pickle",
                "only tensors, dicts, lists and numbers are allowed; this file may be malicious",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise InvalidFile(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, location, numel = pid
        if isinstance(stype, StorageType):
            dtype = stype.dtype
        elif isinstance(stype, DType):
            dtype = TORCH_DTYPES[stype.name]
        else:
            raise InvalidFile(f"storage {key!r} has an unknown storage type")
        if not isinstance(numel, int) or numel < 0:
            raise InvalidFile(f"storage {key!r} has an invalid size {numel!r}")
        return StorageRef(str(key), dtype, numel, str(location))


def unpickle_restricted(data: bytes) -> Any:
    """Replay a pickle admitting only the allowlisted globals (see module doc)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except (InvalidFile, UnsafeFile):
        raise
    except RecursionError:
        raise InvalidFile("pickle nests too deeply") from None
    except Exception as exc:  # any malformed stream: EOFError, UnpicklingError, TypeError from bad args...
        raise InvalidFile(f"data.pkl is not a valid checkpoint pickle ({type(exc).__name__}: {exc})") from None


@dataclass
class TorchZip:
    """The structure of a torch zip checkpoint, with tensors as ``TensorInfo``."""

    path: str
    top: str
    protocol: int
    obj: Any  # the unpickled structure; tensors are TensorRef
    weights: dict[str, TensorInfo] = field(default_factory=dict)
    wrapper: str = "bare"  # "bare" | "model" | "state_dict" | "other"
    extras: list[str] = field(default_factory=list)  # other top-level keys
    other_tensors: int = 0  # tensors outside the weights (optimizer state, ...)

    @property
    def training_state(self) -> bool:
        return "optimizer" in self.extras or "optimizer_states" in self.extras


def _pickle_protocol(data: bytes) -> int:
    if len(data) >= 2 and data[0] == 0x80:
        return data[1]
    return 0


def _local_data_offset(fh: Any, member: zipfile.ZipInfo, path: str) -> int:
    fh.seek(member.header_offset)
    head = fh.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise InvalidFile(f"{path}: corrupt zip local header for {member.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return member.header_offset + 30 + name_len + extra_len


def _count_tensors(obj: Any) -> int:
    """Count distinct tensors in the structure; shared and cyclic references are visited once
    (a hostile pickle can nest one list in itself to make naive traversal exponential)."""
    seen: set[int] = set()
    stack = [obj]
    count = 0
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, TensorRef):
            count += 1
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in obj.items())


def read_torch_zip(path: str | os.PathLike[str]) -> TorchZip:
    """Read names, dtypes, shapes and offsets of a torch zip checkpoint.

    Raises:
        InvalidFile: corrupt zip, bad pickle, storages that do not fit.
        UnsafeFile: the pickle names a global outside the allowlist.
        Unsupported: TorchScript archives, compressed storages.
    """
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidFile(f"{path}: not a readable torch zip archive ({exc})", "the file may be truncated") from None
    with zf, open(path, "rb") as fh:
        members = {m.filename: m for m in zf.infolist()}
        pkl_names = [n for n in members if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not pkl_names:
            if any(n.endswith("/constants.pkl") for n in members) or any("/code/" in n for n in members):
                raise Unsupported(f"{path}: TorchScript archive", "export a state dict with torch.save(model.state_dict())")
            raise InvalidFile(f"{path}: zip archive without data.pkl (not a torch checkpoint)")
        if len(pkl_names) > 1:
            raise InvalidFile(f"{path}: zip archive holds several data.pkl records")
        pkl_name = pkl_names[0]
        top = pkl_name.split("/")[0]
        if any(n == f"{top}/constants.pkl" for n in members):
            raise Unsupported(f"{path}: TorchScript archive", "export a state dict with torch.save(model.state_dict())")
        pkl_member = members[pkl_name]
        if pkl_member.file_size > MAX_PICKLE_BYTES:
            raise InvalidFile(f"{path}: data.pkl is implausibly large ({pkl_member.file_size} bytes)")
        try:
            data = zf.read(pkl_name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise InvalidFile(f"{path}: cannot read data.pkl ({exc})", "the file may be truncated") from None
        try:
            obj = unpickle_restricted(data)
        except InvalidFile as exc:
            raise type(exc)(f"{path}: {exc.message}", exc.hint) from None

        storage_offsets: dict[str, int] = {}

        def locate(ref: TensorRef, name: str) -> TensorInfo:
            st = ref.storage
            if st.key not in storage_offsets:
                member = members.get(f"{top}/data/{st.key}")
                if member is None:
                    raise InvalidFile(f"{path}: tensor {name!r}: storage record data/{st.key} is missing")
                if member.compress_type != zipfile.ZIP_STORED:
                    raise Unsupported(f"{path}: storage data/{st.key} is compressed", "re-save with torch.save")
                if st.dtype not in DTYPE_SIZES:
                    raise InvalidFile(f"{path}: tensor {name!r}: unknown dtype {st.dtype}")
                expected = st.numel * DTYPE_SIZES[st.dtype]
                if member.file_size != expected:
                    raise InvalidFile(
                        f"{path}: tensor {name!r}: storage data/{st.key} holds {member.file_size} bytes, "
                        f"expected {expected}"
                    )
                offset = _local_data_offset(fh, member, path)
                if offset + expected > os.path.getsize(path):
                    raise InvalidFile(f"{path}: storage data/{st.key} runs past the end of the file", "the file is truncated")
                storage_offsets[st.key] = offset
            dtype = ref.dtype or st.dtype
            storage_bytes = st.numel * DTYPE_SIZES[st.dtype]
            if storage_bytes % DTYPE_SIZES[dtype]:
                raise InvalidFile(f"{path}: tensor {name!r}: storage of {storage_bytes} bytes does not hold whole {dtype}")
            storage_numel = storage_bytes // DTYPE_SIZES[dtype]
            extent = 0
            if all(ref.shape):
                extent = ref.storage_offset + 1 + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride))
            if extent > storage_numel:
                raise InvalidFile(f"{path}: tensor {name!r} reaches past the end of its storage")
            return TensorInfo(
                name=name,
                dtype=dtype,
                shape=ref.shape,
                file=path,
                data_offset=storage_offsets[st.key],
                storage_numel=storage_numel,
                storage_offset=ref.storage_offset,
                stride=ref.stride,
                storage_key=st.key,
            )

        result = TorchZip(path=path, top=top, protocol=_pickle_protocol(data), obj=obj)
        state: Any = None
        if _is_state_dict(obj):
            state, result.wrapper = obj, "bare"
        elif isinstance(obj, dict):
            for key in ("model", "state_dict", "module"):
                if _is_state_dict(obj.get(key)):
                    state, result.wrapper = obj[key], ("model" if key == "model" else key)
                    break
            if state is None:
                # A dict mixing tensors and other values: the tensors are the weights.
                state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, TensorRef)}
                result.wrapper = "other"
            result.extras = [str(k) for k, v in obj.items() if v is not state and not isinstance(v, TensorRef)]
        else:
            state, result.wrapper = {}, "other"
        for name, ref in state.items():
            result.weights[name] = locate(ref, name)
        result.other_tensors = _count_tensors(obj) - len(result.weights)
        return result
