"""Plain records shared by the core and the plugins.

They carry what is known from headers alone (names, dtypes, shapes, byte
offsets), so building them never reads tensor data and never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# safetensors dtype name -> item size in bytes. The canonical dtype vocabulary of
# ckpt-tool is safetensors' (torch storages are mapped onto it).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "I16": 2,
    "U16": 2,
    "I32": 4,
    "U32": 4,
    "I64": 8,
    "U64": 8,
    "F16": 2,
    "BF16": 2,
    "F32": 4,
    "F64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "C64": 8,
}

# Human names (as torch spells them) for tables and JSON.
DTYPE_NAMES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a dense tensor of ``dtype`` (safetensors name) and ``shape``."""
    n = DTYPE_SIZES[dtype]
    for d in shape:
        n *= d
    return n


@dataclass
class TensorInfo:
    """Where one tensor lives and what it looks like.

    ``data_offset`` is the absolute byte offset in ``file`` of the tensor's
    storage (not of the view); the view is ``storage_offset`` elements in with
    ``stride``. For safetensors the storage *is* the tensor.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    data_offset: int
    storage_numel: int
    storage_offset: int = 0
    stride: tuple[int, ...] | None = None
    storage_key: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_contiguous(self) -> bool:
        """True when the view is the dense row-major block at ``storage_offset``."""
        if self.stride is None:
            return True
        expected = 1
        for size, st in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and st != expected:
                return False
            expected *= size
        return True

    @property
    def byte_range(self) -> tuple[int, int]:
        """Absolute [begin, end) of the view's bytes; meaningful when contiguous."""
        begin = self.data_offset + self.storage_offset * self.itemsize
        return begin, begin + self.nbytes


@dataclass
class AdapterInfo:
    """One adapter (PEFT dirs can hold several; LitGPT has one)."""

    name: str
    adapter_type: str | None
    path: str
    lora: dict[str, Any] | None = None
    tensors: int = 0
    parameters: int = 0
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointInfo:
    """What a plugin found at a path. ``to_json`` is the documented inspect schema."""

    path: str
    format: str
    kind: str  # "model" | "adapter"
    adapter_type: str | None = None
    container: str | None = None  # "safetensors" | "torch" | "mixed"
    files: list[str] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    lora: dict[str, Any] | None = None
    adapters: list[AdapterInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    training_state: bool = False  # carries optimizer state besides the weights
    wrapper: str | None = None  # torch: "bare" | "model"
    description: str | None = None
    # The same directory can hold two things (a merged LitGPT ``final/``): the
    # adapter next to the model is reported here.
    companions: list[CheckpointInfo] = field(default_factory=list)
    # Plugin-private facts handed between a plugin's own hooks (parsed configs,
    # resolved file paths). Not part of the inspect output.
    details: dict[str, Any] = field(default_factory=dict)
    # The provenance record ckpt-tool wrote with these files (``ckpt_tool.io.provenance``), checked.
    provenance: dict[str, Any] | None = None

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def dtypes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            key = DTYPE_NAMES.get(t.dtype, t.dtype)
            out[key] = out.get(key, 0) + t.numel
        return dict(sorted(out.items()))

    def to_json(self, with_tensors: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "kind": self.kind,
            "adapter_type": self.adapter_type,
            "description": self.description,
            "container": self.container,
            "files": self.files,
            "tensors": len(self.tensors),
            "parameters": self.parameters,
            "dtypes": self.dtypes(),
            "bytes": self.nbytes,
            "training_state": self.training_state,
            "wrapper": self.wrapper,
            "lora": self.lora,
            "adapters": [
                {
                    "name": a.name,
                    "adapter_type": a.adapter_type,
                    "path": a.path,
                    "lora": a.lora,
                    "tensors": a.tensors,
                    "parameters": a.parameters,
                }
                for a in self.adapters
            ],
            "metadata": self.metadata,
            "provenance": self.provenance,
            "warnings": self.warnings,
            "companions": [c.to_json(with_tensors) for c in self.companions],
        }
        if with_tensors:
            data["tensor_list"] = [
                {"name": t.name, "dtype": DTYPE_NAMES.get(t.dtype, t.dtype), "shape": list(t.shape), "parameters": t.numel}
                for t in self.tensors
            ]
        return data
