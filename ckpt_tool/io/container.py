"""One entry point to read any supported container's tensor index, cached per path.

Plugins ask the ``Probe`` handed to their hooks rather than parsing files
themselves, so a file looked at by three plugins is parsed once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.io import sniff as _sniff
from ckpt_tool.io.safetensors_header import read_safetensors_header
from ckpt_tool.io.torchzip import TorchZip, read_torch_zip
from ckpt_tool.model import TensorInfo


@dataclass
class Container:
    """A file's tensor index, whatever its container."""

    path: str
    kind: str  # "safetensors" | "torch"
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__
    torch: TorchZip | None = None  # torch zips: structure, wrapper, extras

    @property
    def wrapper(self) -> str | None:
        return self.torch.wrapper if self.torch else None

    @property
    def training_state(self) -> bool:
        return bool(self.torch and self.torch.training_state)


def read_container(path: str | os.PathLike[str]) -> Container:
    """Read the tensor index of ``path`` (safetensors or torch zip), header only."""
    path = os.fspath(path)
    kind = _sniff.sniff(path)
    if kind == _sniff.SAFETENSORS:
        tensors, metadata = read_safetensors_header(path)
        return Container(path, "safetensors", {t.name: t for t in tensors}, metadata)
    if kind == _sniff.TORCH_ZIP:
        tz = read_torch_zip(path)
        return Container(path, "torch", tz.weights, {}, tz)
    if kind == _sniff.TORCH_LEGACY:
        raise Unsupported(
            f"{path}: legacy (pre-zip, torch < 1.6) torch file",
            "load it in a trusted environment and re-save with a current torch.save",
        )
    if kind == _sniff.PICKLE:
        raise Unsupported(f"{path}: a bare pickle, not a torch zip checkpoint", "re-save it with torch.save")
    raise InvalidFile(f"{path}: not a safetensors or torch checkpoint (unrecognised leading bytes)")


class Probe:
    """Per-invocation cache of container reads (keyed by resolved path)."""

    def __init__(self) -> None:
        self._cache: dict[str, Container] = {}

    def container(self, path: str | os.PathLike[str]) -> Container:
        key = str(Path(path).resolve())
        if key not in self._cache:
            self._cache[key] = read_container(path)
        return self._cache[key]

    def kind(self, path: str | os.PathLike[str]) -> str:
        """The container kind from the leading bytes (cheap; no parsing)."""
        return _sniff.sniff(path)
