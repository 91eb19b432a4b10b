"""``diff``: compare two checkpoints tensor by tensor, streaming one pair at a time.

Both sides are detected by the plugins, so any two supported formats can be
compared (a LitGPT ``lit_model.pth`` against a merged ``model.safetensors``).
Same-dtype contiguous tensors are compared as raw bytes straight from the two
memory maps (a memcmp, no copies); only tensors that differ, or whose dtypes
differ, are converted — in bounded chunks — to measure max |Δ|.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import EXIT_DIFFER
from ckpt_tool.io.container import Probe
from ckpt_tool.io.malloc import release_large_blocks
from ckpt_tool.io.tensors import TensorReader
from ckpt_tool.model import DTYPE_NAMES, TensorInfo

if TYPE_CHECKING:
    import torch

CHUNK_ELEMS = 1 << 22  # 4M elements per float64 scratch chunk: 32 MB


@dataclass
class TensorDiff:
    name: str
    status: str  # "bit-equal" | "within-atol" | "differ" | "shape" | "only-a" | "only-b"
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    max_abs_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": json_status(self.status),
            "dtype_a": DTYPE_NAMES.get(self.dtype_a or "", self.dtype_a),
            "dtype_b": DTYPE_NAMES.get(self.dtype_b or "", self.dtype_b),
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "max_abs_diff": _json_float(self.max_abs_diff),
        }


#: Every status, in the order summaries list them (the table prints them as they are: "bit-equal").
STATUSES = ("bit-equal", "within-atol", "differ", "shape", "only-a", "only-b")


def json_status(status: str) -> str:
    """The status as --json spells it: snake_case like every key and value of the JSON contract."""
    return status.replace("-", "_")


def _json_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    return x if math.isfinite(x) else str(x)


@dataclass
class DiffResult:
    a: str
    b: str
    atol: float | None
    entries: list[TensorDiff] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for e in self.entries if e.status == status)

    @property
    def identical(self) -> bool:
        return all(e.status in ("bit-equal", "within-atol") for e in self.entries)

    @property
    def exit_code(self) -> int:
        return 0 if self.identical else EXIT_DIFFER

    def summary_line(self) -> str:
        n = len(self.entries)
        eq, close = self.count("bit-equal"), self.count("within-atol")
        if self.identical:
            if close:
                return f"identical within atol={self.atol}: {n} tensors ({eq} bit-equal, {close} within tolerance)"
            return f"identical: {eq} tensors bit-equal"
        parts = [f"{self.count('differ')} differ"]
        for status, label in (("shape", "shape mismatch"), ("only-a", "only in A"), ("only-b", "only in B")):
            if self.count(status):
                parts.append(f"{self.count(status)} {label}")
        parts.append(f"{eq} bit-equal")
        if close:
            parts.append(f"{close} within tolerance")
        return "different: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "atol": self.atol,
            "identical": self.identical,
            "counts": {json_status(s): self.count(s) for s in STATUSES},
            "tensors": [e.to_json() for e in self.entries],
        }


def _chunks(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """``t`` in row-major order as flat pieces of at most ``CHUNK_ELEMS`` elements.

    Split along the leading dimensions only, so two tensors of the same shape give pieces of the same
    sizes whatever their strides, and a non-contiguous view (a transpose, a slice) is copied one piece
    at a time instead of materialised whole.
    """
    if t.numel() <= CHUNK_ELEMS or t.dim() == 0:
        yield t.reshape(-1)
        return
    row = t.numel() // t.shape[0]
    if row > CHUNK_ELEMS:
        for i in range(t.shape[0]):
            yield from _chunks(t[i])
        return
    step = max(1, CHUNK_ELEMS // row)
    for i in range(0, t.shape[0], step):
        yield t[i : i + step].reshape(-1)


def _max_abs_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| in float64 (complex: modulus), in bounded chunks; NaN vs NaN counts as equal."""
    import torch

    worst = 0.0
    for cx, cy in zip(_chunks(x), _chunks(y)):
        if cx.is_complex() or cy.is_complex():
            cx, cy = cx.to(torch.complex128), cy.to(torch.complex128)
        else:
            cx, cy = cx.to(torch.float64), cy.to(torch.float64)
        d = (cx - cy).abs()
        both_nan = torch.isnan(cx.abs() if cx.is_complex() else cx) & torch.isnan(cy.abs() if cy.is_complex() else cy)
        same_inf = torch.isinf(cx.abs() if cx.is_complex() else cx) & (cx == cy)
        d = torch.where(both_nan | same_inf, torch.zeros_like(d), d)
        d = torch.nan_to_num(d, nan=math.inf)
        if d.numel():
            worst = max(worst, float(d.max()))
    return worst


def _bytes_equal(reader: TensorReader, a: TensorInfo, b: TensorInfo) -> bool | None:
    """Compare raw bytes when both are contiguous in the same dtype (None: not applicable)."""
    if a.dtype != b.dtype or not (a.is_contiguous and b.is_contiguous):
        return None
    if a.nbytes == 0:
        return True
    import torch

    # torch.equal on uint8 views: a vectorised compare of the two maps, no allocation
    return torch.equal(reader.data(a), reader.data(b))


def compare(
    a: str | os.PathLike[str], b: str | os.PathLike[str], atol: float | None = None, progress: bool = False
) -> DiffResult:
    """Compare the tensors of two checkpoints (any supported formats).

    ``progress``: the engine's progress bar on a terminal, in bytes read from both sides (a 300 MB pair
    takes seconds).
    """
    from ckpt_tool.ops.engine import Progress
    from ckpt_tool.ops.inspect import detect

    probe = Probe()
    ia, ib = detect(Path(a), probe), detect(Path(b), probe)
    ta = {t.name: t for t in ia.tensors}
    tb = {t.name: t for t in ib.tensors}
    pairs = [(x, tb[n]) for n, x in ta.items() if n in tb and tuple(x.shape) == tuple(tb[n].shape)]
    result = DiffResult(str(a), str(b), atol)
    release_large_blocks()
    reader = TensorReader()
    bar = Progress(sum(x.nbytes + y.nbytes for x, y in pairs), "comparing", progress)
    try:
        for name, x in ta.items():
            y = tb.get(name)
            if y is None:
                result.entries.append(TensorDiff(name, "only-a", x.dtype, None, x.shape, None))
                continue
            entry = TensorDiff(name, "differ", x.dtype, y.dtype, tuple(x.shape), tuple(y.shape))
            if tuple(x.shape) != tuple(y.shape):
                entry.status = "shape"
                result.entries.append(entry)
                continue
            same = _bytes_equal(reader, x, y)
            if same is None:
                same = x.dtype == y.dtype and _tensor_bits_equal(reader.tensor(x), reader.tensor(y))
            if same:
                entry.status, entry.max_abs_diff = "bit-equal", 0.0
            else:
                entry.max_abs_diff = _max_abs_diff(reader.tensor(x), reader.tensor(y))
                if atol is not None and entry.max_abs_diff <= atol:
                    entry.status = "within-atol"
            bar.advance(x.nbytes + y.nbytes)
            result.entries.append(entry)
        for name, y in tb.items():
            if name not in ta:
                result.entries.append(TensorDiff(name, "only-b", None, y.dtype, None, y.shape))
    finally:
        bar.close()
        reader.close()
    return result


def _tensor_bits_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equality of the bit patterns (so -0.0 != +0.0 and identical NaNs are equal), chunk by chunk."""
    import torch

    def raw(t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)

    return all(torch.equal(raw(cx), raw(cy)) for cx, cy in zip(_chunks(x), _chunks(y)))
