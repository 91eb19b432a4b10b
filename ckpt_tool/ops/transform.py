"""The plan of a tensor-rewriting command: named inputs → steps → named sinks.

``merge``, ``convert``, ``split`` and ``rename`` all read tensors from some
checkpoints and write tensors into others. Each command (with the plugins that
own the conventions) only *builds* a ``TransformPlan``; the streaming engine
executes it. A plan is data: every output tensor's sink, name, dtype and shape
is known before any byte is written (so headers are written first and a
dry run can list everything), and every tensor a step reads is declared (so the
engine can check that it exists, count progress, and read inputs in file order).

A ``Step`` maps N declared reads to M outputs:

* ``compute=None`` with one read and one output: a byte copy (same dtype; the
  engine uses ``copy_file_range``) or a plain cast;
* ``segments`` (no compute): each output is a concatenation of element ranges of
  the reads (``Segment``) — a row permutation such as a fused qkv split into
  q/k/v, q/k/v fused back, or GPT-NeoX's per-group interleaving. The engine
  copies the byte ranges file to file without torch when the dtype is kept;
  ``run_step`` builds the same tensors with torch (evaluation, casts);
* otherwise ``compute(tensors, load)`` gets the read tensors (read-only views,
  their stored dtype) in ``reads`` order and returns one tensor per ``outs``
  entry, in order. ``load(input, name)`` fetches a further small tensor of an
  input (merge change functions fetch adapter matrices this way).

Many-to-one (HF ``q_proj`` + ``k_proj`` + ``v_proj`` → LitGPT ``attn.qkv``) and
one-to-many (fused qkv LoRA → per-projection LoRA) are single steps.

``evaluate`` runs steps in memory; tests use it to check a plugin's steps
against a peer's converter without writing files, and the engine uses the same
composition rules (``compose``) to chain one plugin's steps into another's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import Unsupported
from ckpt_tool.model import tensor_nbytes

if TYPE_CHECKING:
    import torch

    from ckpt_tool.model import CheckpointInfo

#: ``load(input, name)``: a tensor of a plan input, as a read-only view in its stored dtype.
Load = Callable[[str, str], "torch.Tensor"]
#: ``compute(tensors, load) -> outputs``: the declared reads in order in, one tensor per ``Out`` out.
Compute = Callable[[Sequence["torch.Tensor"], Load], Sequence["torch.Tensor"]]


@dataclass(frozen=True)
class Read:
    """One tensor a step reads: ``name`` in the plan input ``input`` ("base", "adapter", "in", ...)."""

    input: str
    name: str


@dataclass(frozen=True)
class Out:
    """One output tensor, fully known before writing: which sink, its name, safetensors dtype and shape."""

    sink: str
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


@dataclass(frozen=True)
class Segment:
    """``count`` elements of read ``read`` (an index into ``Step.reads``) from flat element ``start``
    (row-major; rows of a contiguous tensor are one range). In elements, not bytes, so a cast
    (``--dtype``) keeps the plan valid."""

    read: int
    start: int
    count: int


@dataclass(frozen=True)
class Same:
    """Reads ``a`` and ``b`` (indices into ``Step.reads``) must hold the same bits, or the step is refused
    with ``message`` / ``hint`` (a tied head that must equal the embeddings it is dropped for)."""

    a: int
    b: int
    message: str
    hint: str = ""

    def refuse(self) -> Exception:
        from ckpt_tool.errors import Refused

        return Refused(self.message, self.hint)


@dataclass(frozen=True)
class Step:
    """N reads → M outputs. ``why`` is shown by ``--dry-run`` and in errors ("qkv fused from q/k/v").

    ``segments``: one tuple per output, the element ranges it concatenates (no ``compute``);
    ``same``: reads checked bit-equal before anything is written (segment steps only).
    """

    outs: tuple[Out, ...]
    reads: tuple[Read, ...]
    compute: Compute | None = None
    why: str = ""
    segments: tuple[tuple[Segment, ...], ...] | None = None
    same: tuple[Same, ...] = ()

    def __post_init__(self) -> None:
        if self.same and (self.segments is None or any(not 0 <= i < len(self.reads) for c in self.same for i in (c.a, c.b))):
            raise ValueError("a bit-equality check belongs to a segment step and names two of its reads")
        if self.segments is not None:
            if self.compute is not None or len(self.segments) != len(self.outs):
                raise ValueError("a segment step has no compute and one segment list per output")
            for out, segs in zip(self.outs, self.segments):
                if sum(s.count for s in segs) != _numel(out.shape) or any(
                    not 0 <= s.read < len(self.reads) or s.start < 0 or s.count <= 0 for s in segs
                ):
                    raise ValueError(f"segments of {out.name!r} do not fill its {out.shape} elements")
        elif self.compute is None and (len(self.reads) != 1 or len(self.outs) != 1):
            raise ValueError("a step without compute copies or casts exactly one read into one output")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def copy_step(input: str, name: str, sink: str, out_name: str, dtype: str, shape: Sequence[int], why: str = "") -> Step:
    """The common 1 → 1 step: copy (same dtype) or cast ``input:name`` to ``sink:out_name``."""
    return Step((Out(sink, out_name, dtype, tuple(shape)),), (Read(input, name),), None, why)


def row_segments(runs: Iterable[tuple[int, int, int]], widths: Sequence[int]) -> tuple[Segment, ...]:
    """``Segment``\\ s of row runs ``(read, first row, rows)``; ``widths[read]``: elements a row of that read.
    Adjacent runs are merged, so a permutation that keeps rows together costs one copy per run."""
    out: list[Segment] = []
    for read, first, n in runs:
        if n <= 0:
            continue
        start, count = first * widths[read], n * widths[read]
        if out and out[-1].read == read and out[-1].start + out[-1].count == start:
            out[-1] = Segment(read, out[-1].start, out[-1].count + count)
        else:
            out.append(Segment(read, start, count))
    return tuple(out)


def segments_of(step: Step) -> tuple[tuple[Segment, ...], ...] | None:
    """A byte-addressable step's outputs as element ranges of its reads (a plain copy is one range), or None
    for a computed step."""
    if step.segments is not None:
        return step.segments
    if step.compute is None:
        return ((Segment(0, 0, _numel(step.outs[0].shape)),),) if _numel(step.outs[0].shape) else ((),)
    return None


@dataclass
class SideFile:
    """A small file published next to the weights after them: copied from ``src`` or holding ``data``."""

    name: str  # path relative to the sink directory
    src: Path | None = None
    data: bytes | None = None


@dataclass
class Sink:
    """One output checkpoint: a registered layout ("lit", "hf", "peft", "safetensors", "torch"), where, how.

    ``options`` are the layout's own (``max_shard_size``, ``wrapper``, ``extras``, ``metadata``,
    ``weights_name``); ``side_files`` (configs, tokenizer files) are published
    only after every weights file and index is in place.
    """

    layout: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    side_files: list[SideFile] = field(default_factory=list)


@dataclass
class TransformPlan:
    """Everything the engine needs; built by a command and its plugins, never by reading tensor bytes.

    ``provenance``: what the command adds to the provenance record the engine writes into every
    output (``ckpt_tool.io.provenance``): ``"operation"`` ("merge", "convert", "split"...; default: the
    engine's ``label``) and sections of its own (``"merge": {...}``). The engine adds the tool, the
    inputs (paths, fingerprints, their own provenance) and the outputs.
    """

    inputs: dict[str, CheckpointInfo]
    steps: list[Step]
    sinks: dict[str, Sink]
    summary: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None

    def outs(self, sink: str | None = None) -> list[Out]:
        return [o for s in self.steps for o in s.outs if sink is None or o.sink == sink]


# --- in-memory evaluation and composition -----------------------------------------------------------


def run_step(step: Step, tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
    """Apply one step to its read tensors; check the results against the declared outputs.

    ``compute=None`` casts when the dtype differs (the engine copies bytes instead
    when it does not). Raises ``Unsupported`` naming the step when a plugin's
    compute returns the wrong number, shape or dtype of tensors (a plugin bug).
    """
    from ckpt_tool.io.tensors import dtype_name, torch_dtype

    if step.segments is not None:
        from ckpt_tool.io.tensors import same_bits

        for check in step.same:
            if not same_bits(tensors[check.a], tensors[check.b]):
                raise check.refuse()
        results = _assemble(step, tensors)
    elif step.compute is None:
        (t,) = tensors
        want = torch_dtype(step.outs[0].dtype)
        results = [t if t.dtype == want else t.to(want)]
    else:
        results = list(step.compute(tensors, load))
    if len(results) != len(step.outs):
        raise Unsupported(
            f"step {step.why or step.outs[0].name!r} produced {len(results)} tensors for {len(step.outs)} outputs "
            "(plugin bug)"
        )
    for out, t in zip(step.outs, results):
        if tuple(t.shape) != out.shape or dtype_name(t.dtype) != out.dtype:
            raise Unsupported(
                f"step {step.why or out.name!r}: {out.name!r} came out {dtype_name(t.dtype)} {tuple(t.shape)}, "
                f"announced {out.dtype} {out.shape} (plugin bug)"
            )
    return results


def _assemble(step: Step, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A segment step with torch: the element ranges concatenated, shaped, cast to the output dtype."""
    import torch

    from ckpt_tool.io.tensors import torch_dtype

    assert step.segments is not None
    flat = [t.reshape(-1) for t in tensors]
    results = []
    for out, segs in zip(step.outs, step.segments):
        parts = [flat[s.read][s.start : s.start + s.count] for s in segs]
        want = torch_dtype(out.dtype)
        if not parts:
            results.append(torch.empty(out.shape, dtype=want))
            continue
        t = (torch.cat(parts) if len(parts) > 1 else parts[0].clone()).view(out.shape)
        results.append(t if t.dtype == want else t.to(want))
    return results


def evaluate(steps: Iterable[Step], load: Load) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``steps`` in memory: ``{sink: {name: tensor}}``. For tests and small plans only."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for step in steps:
        tensors = [load(r.input, r.name) for r in step.reads]
        for o, t in zip(step.outs, run_step(step, tensors, load)):
            out.setdefault(o.sink, {})[o.name] = t
    return out


def compose(producers: Sequence[Step], consumers: Sequence[Step], via: str) -> list[Step]:
    """Chain two plugins' steps: ``consumers`` read input ``via`` ("hub"), which ``producers`` write as sink ``via``.

    Each result step reads only original inputs and writes only the consumers'
    sinks: a consumer is merged with the producers of everything it reads (and,
    transitively, with every other consumer that needs one of those producers),
    so a producer with several outputs (a fused qkv split into q, k, v) runs
    once. A pure rename chain stays a ``compute=None`` copy, so the engine can
    still copy bytes file to file.

    Raises:
        Unsupported: a consumer reads a ``via`` tensor that no producer makes, or
            a producer output nobody reads is left over (the conversion would
            silently drop a tensor).
    """
    made: dict[str, int] = {}
    for i, p in enumerate(producers):
        for o in p.outs:
            if o.sink != via:
                raise Unsupported(f"producer step writes sink {o.sink!r}, expected {via!r} (plugin bug)")
            if o.name in made:
                raise Unsupported(f"two producer steps write {via}:{o.name!r} (plugin bug)")
            made[o.name] = i
    used: set[str] = set()
    # union-find over producers shared between consumers
    parent = list(range(len(consumers)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[int, int] = {}  # producer -> first consumer using it
    for ci, c in enumerate(consumers):
        for r in c.reads:
            if r.input != via:
                continue
            if r.name not in made:
                raise Unsupported(f"{c.why or c.outs[0].name!r} needs {via}:{r.name!r}, which nothing produces")
            used.add(r.name)
            pi = made[r.name]
            if pi in owner:
                a, b = find(ci), find(owner[pi])
                if a != b:
                    parent[a] = b
            else:
                owner[pi] = ci
    left = sorted(set(made) - used)
    if left:
        raise Unsupported(
            f"{len(left)} converted tensor(s) would be dropped (e.g. {left[0]!r}): no step of the target "
            "convention takes them"
        )
    groups: dict[int, list[int]] = {}
    for ci in range(len(consumers)):
        groups.setdefault(find(ci), []).append(ci)
    result: list[Step] = []
    for members in groups.values():
        cs = [consumers[i] for i in members]
        ps = sorted({made[r.name] for c in cs for r in c.reads if r.input == via})
        prods = [producers[i] for i in ps]
        if (
            len(cs) == 1
            and len(prods) == 1
            and cs[0].compute is None
            and prods[0].compute is None
            and cs[0].segments is None
            and prods[0].segments is None
            and prods[0].outs[0].dtype == cs[0].outs[0].dtype
        ):
            # a rename of a rename (A -> B, then B kept as B) is one copy/cast; a chain of two different
            # casts is not always one cast (fp32 -> bf16 -> fp32 loses bits), so it is fused below
            result.append(Step(cs[0].outs, prods[0].reads, None, cs[0].why or prods[0].why))
            continue
        result.append(_rearranged(prods, cs, via) or _fused(prods, cs, via))
    return result


def _rearranged(prods: list[Step], cons: list[Step], via: str) -> Step | None:
    """Producers and consumers that only move elements (copies, segment steps), composed into one segment
    step over the original reads; None when one computes, or a consumer casts a hub tensor (the casts of a
    chain are not one cast)."""
    made: dict[str, tuple[Step, int]] = {}
    for p in prods:
        if segments_of(p) is None:
            return None
        for i, o in enumerate(p.outs):
            made[o.name] = (p, i)
    reads: list[Read] = []
    index: dict[Read, int] = {}

    def read_index(r: Read) -> int:
        if r not in index:
            index[r] = len(reads)
            reads.append(r)
        return index[r]

    def whole(r: Read) -> int | None:
        """The original read a check on ``r`` compares: ``r`` itself, or what a hub copy of a whole read copies."""
        if r.input != via:
            return read_index(r)
        p, i = made[r.name]
        segs = (segments_of(p) or ())[i]
        if len(segs) != 1 or segs[0].start or segs[0].count != _numel(p.outs[i].shape) or p.same:
            return None
        return read_index(p.reads[segs[0].read])

    same: list[Same] = [
        dataclasses.replace(c, a=read_index(p.reads[c.a]), b=read_index(p.reads[c.b])) for p in prods for c in p.same
    ]
    segments: list[tuple[Segment, ...]] = []
    for c in cons:
        csegs = segments_of(c)
        if csegs is None:
            return None
        for check in c.same:
            a, b = whole(c.reads[check.a]), whole(c.reads[check.b])
            if a is None or b is None:
                return None
            same.append(dataclasses.replace(check, a=a, b=b))
        for out, segs in zip(c.outs, csegs):
            parts: list[Segment] = []
            for seg in segs:
                r = c.reads[seg.read]
                if r.input != via:
                    parts.append(Segment(read_index(r), seg.start, seg.count))
                    continue
                p, i = made[r.name]
                if p.outs[i].dtype != out.dtype:
                    return None
                parts.extend(_slice(segments_of(p)[i], seg.start, seg.count, lambda j, p=p: read_index(p.reads[j])))
            segments.append(tuple(parts))
    outs = tuple(o for c in cons for o in c.outs)
    why = "; ".join(dict.fromkeys(s.why for s in (*prods, *cons) if s.why))
    return Step(outs, tuple(reads), None, why, tuple(segments), tuple(same))


def _slice(segs: Sequence[Segment], start: int, count: int, read: Callable[[int], int]) -> list[Segment]:
    """Elements ``[start, start + count)`` of the concatenation ``segs``, as segments (reads renumbered)."""
    out: list[Segment] = []
    pos = 0
    for s in segs:
        lo, hi = max(start, pos), min(start + count, pos + s.count)
        if lo < hi:
            out.append(Segment(read(s.read), s.start + lo - pos, hi - lo))
        pos += s.count
    return out


def _fused(prods: list[Step], cons: list[Step], via: str) -> Step:
    reads: list[Read] = []
    index: dict[Read, int] = {}
    for p in prods:
        for r in p.reads:
            if r not in index:
                index[r] = len(reads)
                reads.append(r)

    def compute(tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
        hub: dict[str, torch.Tensor] = {}
        for p in prods:
            for o, t in zip(p.outs, run_step(p, [tensors[index[r]] for r in p.reads], load)):
                hub[o.name] = t
        results: list[torch.Tensor] = []
        for c in cons:
            ins = [hub[r.name] if r.input == via else load(r.input, r.name) for r in c.reads]
            results.extend(run_step(c, ins, load))
        return results

    outs = tuple(o for c in cons for o in c.outs)
    why = "; ".join(dict.fromkeys(s.why for s in (*prods, *cons) if s.why))
    return Step(outs, tuple(reads), compute, why)


def check_unique(outs: Iterable[Out]) -> None:
    """Refuse two outputs of one sink with the same name (a rename that maps two tensors onto one)."""
    seen: dict[tuple[str, str], int] = {}
    dupes: list[str] = []
    for o in outs:
        key = (o.sink, o.name)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            dupes.append(o.name)
    if dupes:
        from ckpt_tool.errors import Refused

        raise Refused(
            f"{len(dupes)} output name(s) would be written twice (e.g. {dupes[0]!r})",
            "two tensors map onto one name; nothing was written",
        )


# --- conversions between conventions, through Hugging Face naming ("the hub") ---------------------


HUB = "hub"


@dataclass
class HubView:
    """A checkpoint expressed in Hugging Face naming: what a plugin's ``ckpt_to_hub`` returns.

    Conventions convert through the hub so that no plugin imports another:
    LitGPT LoRA → PEFT is ``lit``'s ``to_hub`` composed with ``peft``'s ``from_hub``.

    Attributes:
        kind: ``"model"`` or ``"adapter"``.
        steps: read the source checkpoint (input ``"in"``) and write sink ``"hub"``.
            Models: transformers state-dict names exactly as ``save_pretrained``
            writes them (``model.layers.0.self_attn.q_proj.weight``; no ``lm_head.weight``
            when the embeddings are tied). Adapters: PEFT's key grammar without the
            ``base_model.model.`` prefix (``model.layers.0.self_attn.q_proj.lora_A.weight``,
            ``….lora_B.weight``) plus full tensors under their HF names.
        config: models: the ``config.json`` dict; adapters: PEFT ``LoraConfig`` fields
            (``r``, ``lora_alpha``, ``target_modules``, ``rank_pattern``, ``alpha_pattern``,
            ``base_model_name_or_path``, ``use_rslora``, ``use_dora``, ...).
        files: side files that travel with the checkpoint (tokenizer, generation config):
            destination name → source path.
        extra: facts the target plugin may use (``generation_config`` dict, ``model_type``).
    """

    kind: str
    steps: list[Step]
    config: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class HubResult:
    """What a plugin's ``ckpt_from_hub`` returns: steps reading input ``"hub"`` and writing sink ``"out"``,
    the side files of its layout (generated configs, copied tokenizer files) and layout options."""

    steps: list[Step]
    side_files: list[SideFile] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
