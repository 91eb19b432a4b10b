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
from dataclasses import dataclass, field, replace
from typing import Any

from ckpt_tool.errors import InvalidFile, UnsafeFile, Unsupported
from ckpt_tool.io.picklescan import scan
from ckpt_tool.io.regular import open_regular
from ckpt_tool.limits import MAX_PICKLE_BYTES, MAX_TENSOR_DIMS, MAX_VIEW_EXPANSION_BYTES, MAX_ZIP_MEMBERS
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

_INT64_MAX = (1 << 63) - 1
_SET_DATA_ATTRS = {"data", "real", "imag", "grad"}  # setattr on these replaces a tensor's contents


def _refuse_build(self: Any, state: Any) -> None:
    """BUILD (``__setstate__``) on a stand-in for a torch global: torch.save never writes it, and letting
    pickle update the stand-in's ``__dict__`` would rewrite shared state (every FloatStorage's dtype)."""
    raise InvalidFile(f"the pickle modifies {type(self).__name__} {self!r:.60} after creating it (BUILD)")


@dataclass(frozen=True)
class StorageType:
    dtype: str

    __setstate__ = _refuse_build


@dataclass(frozen=True)
class DType:
    """Stand-in for a ``torch.dtype`` value found in the pickle."""

    name: str

    __setstate__ = _refuse_build


@dataclass
class StorageRef:
    key: str
    dtype: str
    numel: int
    location: str

    __setstate__ = _refuse_build


def _is_int(v: Any) -> bool:
    return type(v) is int  # not bool, not an int subclass


@dataclass
class TensorRef:
    """Stand-in for a tensor: enough to locate and describe it."""

    storage: StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str | None = None  # element dtype when it differs from the storage's (``_rebuild_tensor_v3``)
    parameter: bool = False

    def __setstate__(self, state: Any) -> None:
        """BUILD on a tensor, as ``torch.load(weights_only=True)`` does it.

        A plain tensor gets ``tensor.set_(*state)``; a Parameter ``Tensor.__setstate__(state)``. The only
        forms that can change the view are ``(storage, offset, size, stride)`` (both) and
        ``(data, ...)`` of length 5 (Parameter): they are validated like a fresh rebuild, so a BUILD can
        never move a view outside its storage after it was checked. torch.save writes none of them.
        """
        if not isinstance(state, tuple):
            raise InvalidFile(f"the pickle modifies a tensor with a {type(state).__name__} state (torch refuses this)")
        if len(state) == 4:
            storage = state[0]
            if not isinstance(storage, StorageRef) or storage.dtype != self.storage.dtype:
                raise InvalidFile("the pickle re-points a tensor at something that is not a storage of its dtype")
            new = _rebuild_tensor(*state)
            self.storage, self.storage_offset, self.shape, self.stride = new.storage, new.storage_offset, new.shape, new.stride
        elif self.parameter and len(state) == 5 and isinstance(state[0], TensorRef):
            src = state[0]
            self.storage, self.storage_offset, self.shape, self.stride, self.dtype = (
                src.storage, src.storage_offset, src.shape, src.stride, src.dtype
            )
        elif self.parameter and len(state) == 3:
            if not isinstance(state[0], bool):
                raise InvalidFile(f"invalid requires_grad {state[0]!r:.40} in a parameter's state")
        else:
            raise InvalidFile(f"the pickle modifies a tensor with a state torch refuses ({len(state)} items)")


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise InvalidFile(f"tensor {what} {value!r:.60} is not a tuple")
    if len(value) > MAX_TENSOR_DIMS:
        raise InvalidFile(f"tensor has {len(value)} dimensions (limit {MAX_TENSOR_DIMS})")
    if not all(_is_int(d) and 0 <= d <= _INT64_MAX for d in value):
        raise InvalidFile(f"invalid tensor {what} {tuple(value)!r:.80}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
    """``torch._utils._rebuild_tensor``: ``t.set_(storage, offset, size, stride)`` with torch's argument checks
    (the extent against the storage is checked once the storage record is known, in ``read_torch_zip``)."""
    if not isinstance(storage, StorageRef):
        raise InvalidFile("tensor rebuilt from something that is not a storage")
    if not _is_int(storage_offset) or not 0 <= storage_offset <= _INT64_MAX:
        raise InvalidFile(f"invalid storage offset {storage_offset!r:.40}")
    shape, strides = _dims(size, "size"), _dims(stride, "stride")
    if len(shape) != len(strides):
        raise InvalidFile(f"tensor size {shape!r:.60} and stride {strides!r:.60} disagree")
    return TensorRef(storage, storage_offset, shape, strides)


_FLOATING = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "C64"}


def _finish(ref: TensorRef, requires_grad: Any, metadata: Any) -> TensorRef:
    if not isinstance(requires_grad, bool):
        raise InvalidFile(f"invalid requires_grad {requires_grad!r:.40}")
    if requires_grad and (ref.dtype or ref.storage.dtype) not in _FLOATING:
        raise InvalidFile("an integer tensor requires grad (torch refuses to load this)")
    if metadata:
        if not isinstance(metadata, dict) or not all(isinstance(v, bool) for v in metadata.values()):
            raise InvalidFile(f"invalid tensor metadata {metadata!r:.60}")
        if any(metadata.values()):
            # the conj / neg bit: the stored bytes are not the tensor's values
            raise Unsupported(
                f"tensor with lazy {'/'.join(k for k, v in metadata.items() if v)} bit set",
                "re-save it after .resolve_conj().resolve_neg()",
            )
    return ref


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any, metadata: Any = None
) -> TensorRef:
    return _finish(_rebuild_tensor(storage, storage_offset, size, stride), requires_grad, metadata)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorRef:
    """torch writes dtypes without a typed storage class (float8, uint16/32/64) as a byte storage plus a dtype."""
    if not isinstance(dtype, DType):
        raise InvalidFile(f"tensor rebuilt with an invalid dtype {dtype!r:.40}")
    ref = _rebuild_tensor(storage, storage_offset, size, stride)
    ref.dtype = TORCH_DTYPES[dtype.name]
    return _finish(ref, requires_grad, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> TensorRef:
    """``torch.nn.Parameter(data, requires_grad)``: a new object over the same view."""
    if not isinstance(data, TensorRef):
        raise InvalidFile(f"parameter rebuilt from {type(data).__name__}, not a tensor")
    if not isinstance(requires_grad, bool):
        raise InvalidFile(f"invalid requires_grad {requires_grad!r:.40}")
    return replace(data, parameter=True)


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> TensorRef:
    """As ``_rebuild_parameter``, then ``setattr`` for each state entry: refused where that would replace the
    parameter's contents (``data``), which torch would do silently."""
    param = _rebuild_parameter(data, requires_grad, backward_hooks)
    attrs = state[0] if isinstance(state, tuple) and len(state) == 2 else state
    if attrs and not isinstance(attrs, dict):
        raise InvalidFile(f"invalid parameter state {type(attrs).__name__}")
    if isinstance(attrs, dict) and _SET_DATA_ATTRS & set(map(str, attrs)):
        raise InvalidFile("the pickle replaces a parameter's data through its state")
    return param


class TorchSize(tuple):  # type: ignore[type-arg]
    """Stand-in for a ``torch.Size`` value: a tuple, but not a plain one (a writer re-pickling top-level
    entries must not turn it into a tuple, ``writers.is_plain``)."""


def _torch_size(*args: Any) -> TorchSize:
    return TorchSize(args[0]) if args else TorchSize()


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    return collections.OrderedDict(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch.storage", "UntypedStorage"): StorageType("U8"),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
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


def _ascii(value: Any) -> Any:
    """torch's ``_maybe_decode_ascii``: persistent-id fields may be bytes (pickles from Python 2)."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


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
        """torch's ``persistent_load``: ``("storage", StorageType, key, location, numel)`` only."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and _ascii(pid[0]) == "storage"):
            raise InvalidFile(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, StorageType):
            raise InvalidFile(f"storage {key!r:.40} has an unknown storage type {stype!r:.40}")
        if _is_int(key) and 0 <= key <= _INT64_MAX:
            # LitGPT's incremental_save (convert_lit_checkpoint's model.pth) numbers its storages with ints;
            # torch.load reads record f"data/{key}" either way
            key = str(key)
        key, location = _ascii(key), _ascii(location)
        if not isinstance(key, str) or not isinstance(location, str):
            raise InvalidFile(f"storage key {key!r:.40} / location {location!r:.40} is not a string")
        if not _is_int(numel) or not 0 <= numel <= _INT64_MAX:
            raise InvalidFile(f"storage {key!r:.40} has an invalid size {numel!r:.40}")
        return StorageRef(key, stype.dtype, numel, location)


def unpickle_restricted(data: bytes) -> Any:
    """Replay a pickle admitting only the allowlisted globals (see module doc).

    The opcode stream is pre-scanned first (``picklescan.scan``): the C unpickler trusts memo indices and
    recurses without a guard on deep structures, so a tiny hostile pickle could allocate 32 GiB or crash
    the interpreter.
    """
    scan(data)
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except (InvalidFile, UnsafeFile, Unsupported):
        raise
    except RecursionError:
        raise InvalidFile("pickle nests too deeply") from None
    except MemoryError:
        raise InvalidFile("data.pkl needs more memory than this machine has (crafted file?)") from None
    except Exception as exc:  # any malformed stream: EOFError, UnpicklingError, TypeError from bad args...
        raise InvalidFile(f"data.pkl is not a valid checkpoint pickle ({type(exc).__name__}: {exc!s:.200})") from None


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


def _all_tensors(obj: Any) -> list[TensorRef]:
    """Every distinct tensor in the structure; shared and cyclic references are visited once
    (a hostile pickle can nest one list in itself to make naive traversal exponential)."""
    seen: set[int] = set()
    stack = [obj]
    found: list[TensorRef] = []
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, TensorRef):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in obj.items())


def _zip_entries(fh: Any) -> int | None:
    """The entry count the end-of-central-directory record declares (None if it cannot be found)."""
    try:
        endrec = zipfile._EndRecData(fh)  # type: ignore[attr-defined]
    except (OSError, ValueError, struct.error):
        return None
    return None if not endrec else int(endrec[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]


def _check_member(path: str, m: zipfile.ZipInfo) -> None:
    """Refuse encrypted and compressed records: torch.save stores every record uncompressed, torch cannot
    read encrypted ones, and a deflated data.pkl is how a 1 MB file inflates to gigabytes."""
    if m.flag_bits & 0x41:  # bit 0: encrypted, bit 6: strong encryption
        raise InvalidFile(f"{path}: zip record {m.filename} is encrypted", "torch cannot read encrypted checkpoints either")
    if m.compress_type != zipfile.ZIP_STORED:
        raise Unsupported(
            f"{path}: zip record {m.filename} is compressed (method {m.compress_type})",
            "torch.save stores records uncompressed; re-save the checkpoint with torch.save",
        )
    if m.compress_size != m.file_size:
        raise InvalidFile(f"{path}: zip record {m.filename} is stored but its sizes disagree")


@dataclass
class _Storage:
    dtype: str
    numel: int
    offset: int  # absolute byte offset of the record's data


def read_torch_zip(path: str | os.PathLike[str]) -> TorchZip:
    """Read names, dtypes, shapes and offsets of a torch zip checkpoint.

    Every tensor in the pickle (weights, optimizer state, anything) is checked against its storage
    record the way ``torch.load`` checks it: the record exists and holds exactly ``numel × itemsize``
    bytes, every use of a storage key agrees on its dtype and size, and each view (offset, size,
    stride) stays inside it.

    Raises:
        InvalidFile: corrupt zip, bad pickle, storages that do not fit, a safety limit exceeded.
        UnsafeFile: the pickle names a global outside the allowlist.
        Unsupported: TorchScript archives, compressed records, conj/neg-bit tensors.
    """
    path = os.fspath(path)
    with open_regular(path) as fh:
        file_size = os.fstat(fh.fileno()).st_size
        entries = _zip_entries(fh)
        if entries is not None and entries > MAX_ZIP_MEMBERS:
            raise InvalidFile(f"{path}: zip archive declares {entries} records (limit {MAX_ZIP_MEMBERS})")
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError) as exc:
            raise InvalidFile(f"{path}: not a readable torch zip archive ({exc})", "the file may be truncated") from None
        with zf:
            return _read(path, fh, zf, file_size)


def _read(path: str, fh: Any, zf: zipfile.ZipFile, file_size: int) -> TorchZip:
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InvalidFile(f"{path}: zip archive holds {len(infos)} records (limit {MAX_ZIP_MEMBERS})")
    members: dict[str, zipfile.ZipInfo] = {}
    for m in infos:
        if m.filename in members:
            # which copy a reader sees depends on the reader: the file is ambiguous
            raise InvalidFile(f"{path}: zip archive holds record {m.filename} twice")
        members[m.filename] = m
    pkl_names = [n for n in members if n.count("/") == 1 and n.endswith("/data.pkl")]
    if not pkl_names:
        if any(n.endswith("/constants.pkl") for n in members) or any("/code/" in n for n in members):
            raise Unsupported(f"{path}: TorchScript archive", "export a state dict with torch.save(model.state_dict())")
        raise InvalidFile(f"{path}: zip archive without data.pkl (not a torch checkpoint)")
    if len(pkl_names) > 1:
        raise InvalidFile(f"{path}: zip archive holds several data.pkl records")
    pkl_name = pkl_names[0]
    top = pkl_name.split("/")[0]
    if f"{top}/constants.pkl" in members:
        raise Unsupported(f"{path}: TorchScript archive", "export a state dict with torch.save(model.state_dict())")
    pkl_member = members[pkl_name]
    _check_member(path, pkl_member)
    if pkl_member.file_size > MAX_PICKLE_BYTES:
        raise InvalidFile(
            f"{path}: data.pkl is {pkl_member.file_size} bytes (limit {MAX_PICKLE_BYTES}); "
            "real checkpoints' pickles are a few MB"
        )
    try:
        data = zf.read(pkl_name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, struct.error) as exc:
        raise InvalidFile(f"{path}: cannot read data.pkl ({exc})", "the file may be truncated") from None
    try:
        obj = unpickle_restricted(data)
    except InvalidFile as exc:
        raise type(exc)(f"{path}: {exc.message}", exc.hint) from None
    except Unsupported as exc:
        raise Unsupported(f"{path}: {exc.message}", exc.hint) from None

    storages: dict[str, _Storage] = {}

    def storage_of(st: StorageRef, name: str) -> _Storage:
        known = storages.get(st.key)
        if known is not None:
            if (known.dtype, known.numel) != (st.dtype, st.numel):
                # torch.save never writes this; torch.load would reinterpret the first declaration's bytes
                raise InvalidFile(
                    f"{path}: tensor {name!r}: storage data/{st.key} is declared as {st.numel} {st.dtype} "
                    f"and elsewhere as {known.numel} {known.dtype}"
                )
            return known
        member = members.get(f"{top}/data/{st.key}")
        if member is None:
            raise InvalidFile(f"{path}: tensor {name!r}: storage record data/{st.key} is missing")
        _check_member(path, member)
        if st.dtype not in DTYPE_SIZES:
            raise InvalidFile(f"{path}: tensor {name!r}: unknown dtype {st.dtype}")
        expected = st.numel * DTYPE_SIZES[st.dtype]
        if member.file_size != expected:
            raise InvalidFile(
                f"{path}: tensor {name!r}: storage data/{st.key} holds {member.file_size} bytes, expected {expected}"
            )
        offset = _local_data_offset(fh, member, path)
        if offset + expected > file_size:
            raise InvalidFile(f"{path}: storage data/{st.key} runs past the end of the file", "the file is truncated")
        storages[st.key] = known = _Storage(st.dtype, st.numel, offset)
        return known

    def locate(ref: TensorRef, name: str) -> TensorInfo:
        st = storage_of(ref.storage, name)
        dtype = ref.dtype or st.dtype
        storage_bytes = st.numel * DTYPE_SIZES[st.dtype]
        itemsize = DTYPE_SIZES[dtype]
        if storage_bytes % itemsize:
            raise InvalidFile(f"{path}: tensor {name!r}: storage of {storage_bytes} bytes does not hold whole {dtype}")
        storage_numel = storage_bytes // itemsize
        numel = 1
        for d in ref.shape:
            numel *= d
        extent = 0
        if numel:
            extent = ref.storage_offset + 1 + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride))
        if extent > storage_numel:
            raise InvalidFile(f"{path}: tensor {name!r} reaches past the end of its storage")
        if numel * itemsize > storage_bytes + MAX_VIEW_EXPANSION_BYTES:
            raise InvalidFile(
                f"{path}: tensor {name!r} is a view of {numel * itemsize} bytes over a storage of {storage_bytes} "
                f"(stride 0 or overlapping strides; limit {MAX_VIEW_EXPANSION_BYTES} bytes of expansion)",
                "copying it would need that much memory; re-save it with .contiguous()",
            )
        return TensorInfo(
            name=name,
            dtype=dtype,
            shape=ref.shape,
            file=path,
            data_offset=st.offset,
            storage_numel=storage_numel,
            storage_offset=ref.storage_offset,
            stride=ref.stride,
            storage_key=ref.storage.key,
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
    weights = {id(ref) for ref in state.values()}
    others = [ref for ref in _all_tensors(obj) if id(ref) not in weights]
    for ref in others:  # optimizer state and the like: torch.load checks them too
        locate(ref, f"<non-weight tensor on storage {ref.storage.key}>")
    result.other_tensors = len(others)
    return result
