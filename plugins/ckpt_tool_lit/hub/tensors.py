"""Tensor maps LitGPT ↔ transformers, and the one place they become transform steps.

A family describes its architecture as a ``Layout``: a small table of ``T`` entries, one per tensor of
a layer (and of an MoE expert, and outside the layers), each naming the LitGPT tensor(s) and the
transformers tensor(s); the LitGPT shapes are ``LitModel``'s (``layer_tensors``, the table a test
checks against ``litgpt.GPT``). The entry's form says the operation, both ways:

* one name each side: a copy (LitGPT's converters rename and never cast);
* a tuple of transformers modules: LitGPT's fused ``attn.qkv`` rows split into q, k, v (``split``
  views) and ``torch.cat((q, k, v))`` back;
* a tuple of LitGPT tensors: several LitGPT tensors that are row blocks of one transformers tensor
  (Phi-3's ``gate_up_proj`` = fc_1 rows then fc_2 rows);
* ``regroup``: a fused qkv whose transformers rows are interleaved per query group (GPT-NeoX, Falcon).

The last three only move whole rows (``Rows``): they become segment steps, copied byte range by byte range.

``units`` expands a layout for one config into ``Unit``\\ s (every tensor of the model, with the
embeddings and the head, tied or not), lazily; ``plan`` turns them into steps for one direction and
checks the checkpoint against them: every tensor placed or refused by name, every shape and dtype
checked, a hostile layer or expert count refused after ``SLACK`` tensors too many instead of planned.
The computes do exactly what LitGPT's converters do, so results are bit-identical.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.io.tensors import is_float
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Compute, Out, Read, Same, Segment, Step, copy_step, row_segments
from ckpt_tool_lit.geometry import Geometry
from ckpt_tool_lit.hub.model_config import Shape

if TYPE_CHECKING:
    import torch

    from ckpt_tool_lit.hub.model_config import LitModel

WTE = "transformer.wte.weight"
LM_HEAD = "lm_head.weight"
#: Tensors a config may describe beyond the checkpoint before the plan stops (a missing layer or two is
#: listed by name; a hostile ``n_layer`` / ``n_expert`` is refused without building its table).
SLACK = 1024
#: transformers' separate q/k/v projections of LitGPT's fused qkv (LLaMA, Qwen, Gemma, Phi).
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@dataclass(frozen=True)
class T:
    """One tensor mapping of a layout (names relative to the layer, or absolute in ``Layout.top``)."""

    lit: str | tuple[str, ...]
    hf: str | tuple[str, ...]  # a tuple of modules: the lit tensor's row blocks (".weight"/".bias" appended)
    regroup: bool = False  # fused qkv rows interleaved per query group in transformers


@dataclass(frozen=True)
class Layout:
    """One transformers architecture's names for a LitGPT model."""

    layer: tuple[T, ...]
    hf_layer: str = "model.layers."  # transformers' prefix of layer i is f"{hf_layer}{i}."
    top: tuple[T, ...] = (T("transformer.ln_f.weight", "model.norm.weight"),)
    embed: str = "model.embed_tokens.weight"
    head: str = LM_HEAD
    expert: tuple[T, ...] = ()
    expert_prefix: str = ""  # transformers, under the layer: "block_sparse_moe.experts." / "mlp.experts."
    #: transformers buffers of old saves (rotary ``inv_freq``, causal masks): consumed, written nowhere.
    buffers: str = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"


@dataclass(frozen=True)
class Rows:
    """A row permutation: output ``i`` concatenates the row runs ``outs[i]`` = ``(read, first row, rows)``.

    What LitGPT's converters do with ``split``, ``torch.cat`` and ``qkv_reassemble`` moves whole rows,
    so every such unit is a segment step: the engine copies the byte ranges without torch (bit-identical
    by construction) and casts through torch only when ``--dtype`` asks for it.
    """

    outs: tuple[tuple[tuple[int, int, int], ...], ...]
    same: tuple[Same, ...] = ()  # reads that must hold the same bits (a tied head and its embeddings)

    @classmethod
    def split(cls, sizes: Sequence[int]) -> Rows:
        """One read cut into consecutive row blocks of ``sizes``."""
        firsts = [sum(sizes[:i]) for i in range(len(sizes))]
        return cls(tuple(((0, f, n),) for f, n in zip(firsts, sizes)))

    @classmethod
    def cat(cls, sizes: Sequence[int]) -> Rows:
        """The reads (of ``sizes`` rows) one after the other."""
        return cls((tuple((i, 0, n) for i, n in enumerate(sizes)),))

    @classmethod
    def runs(cls, runs: Iterable[tuple[int, int]]) -> Rows:
        """One read's rows reordered: ``(first row, rows)`` runs of it."""
        return cls((tuple((0, f, n) for f, n in runs),))

    def segments(self, shapes: Sequence[Shape]) -> tuple[tuple[Segment, ...], ...]:
        widths = [math.prod(s[1:]) for s in shapes]
        return tuple(row_segments(o, widths) for o in self.outs)


@dataclass(frozen=True)
class Unit:
    """LitGPT tensors ``lit`` ↔ transformers tensors ``hf`` (name, shape), with the compute or row permutation
    each way (None: a copy of the one read tensor into each output)."""

    lit: tuple[tuple[str, Shape], ...]
    hf: tuple[tuple[str, Shape], ...]
    to_hf: Compute | Rows | None = None
    to_lit: Compute | Rows | None = None
    why: str = ""


def _unit(t: T, lp: str, hp: str, table: Mapping[str, Shape], geo: Geometry) -> Unit:
    """The unit of one layout entry; ``table``: LitGPT's tensors of the block (or outside the blocks)."""
    lit = (t.lit,) if isinstance(t.lit, str) else t.lit
    missing = [lp + n for n in lit if lp + n not in table]
    if missing:
        raise Unsupported(f"{missing[0]} is not a tensor of this LitGPT model, but the layout maps it (plugin bug)")
    s = table[lp + lit[0]]
    if isinstance(t.hf, tuple):  # LitGPT's fused qkv ↔ q, k, v
        rows = geo.qkv_sizes
        kind = str(t.lit).rsplit(".", 1)[1]
        parts = tuple((f"{hp}{m}.{kind}", (r, *s[1:])) for m, r in zip(t.hf, rows))
        return Unit(((lp + str(t.lit), s),), parts, Rows.split(rows), Rows.cat(rows), f"fused qkv {kind} ↔ q/k/v")
    if isinstance(t.lit, tuple):  # LitGPT row blocks ↔ one fused transformers tensor
        sizes = tuple(table[lp + n][0] for n in t.lit)
        hf = ((hp + t.hf, (sum(sizes), *s[1:])),)
        lit = tuple((lp + n, table[lp + n]) for n in t.lit)
        return Unit(lit, hf, Rows.cat(sizes), Rows.split(sizes), f"{t.hf} = row blocks")
    if t.regroup:
        return Unit(
            ((lp + t.lit, s),), ((hp + t.hf, s),), Rows.runs(geo.interleaved_runs()), Rows.runs(geo.grouped_runs()),
            "qkv rows regrouped (per-group interleaved in transformers)",
        )  # fmt: skip
    return Unit(((lp + t.lit, s),), ((hp + t.hf, s),))


def units(c: LitModel, layout: Layout, tied: bool, hf_names: Iterable[str] = (), untie: str = "") -> Iterator[Unit]:
    """Every tensor of the model ``c`` describes, in LitGPT's state-dict order (``lm_head`` first), lazily
    (see ``plan``).

    ``tied``: the transformers model ties its head to the embeddings, so it stores no head. LitGPT always
    stores ``lm_head.weight``: lit → hf writes the embeddings once after checking the head holds the same
    bits (LitGPT's converters drop a trained head unseen; ``untie`` says how to keep it); hf → lit writes
    the embeddings into both, as LitGPT does, or checks the head a tied file still carries (``hf_names``).
    """
    geo, outer = c.geometry, c.outer_tensors()
    emb = outer[WTE]
    lit_pair = ((LM_HEAD, emb), (WTE, emb))
    if not tied:
        yield Unit(((LM_HEAD, emb),), ((layout.head, emb),))
    if "lm_head.bias" in outer:  # LitGPT's lm_head_bias (Phi): the same name in transformers
        yield _unit(T("lm_head.bias", "lm_head.bias"), "", "", outer, geo)
    if not tied:
        yield Unit(((WTE, emb),), ((layout.embed, emb),))
    elif layout.head in set(hf_names):
        same = Same(
            0, 1, f"{layout.head} differs from {layout.embed}, but config.json ties the output head to the embeddings "
            "(transformers would use the embeddings, LitGPT's converter the stored head)",
            "set tie_word_embeddings to false in config.json if the stored head is meant",
        )  # fmt: skip
        # LitGPT's lm_head.weight is the stored head, transformer.wte.weight the embeddings
        to_lit = Rows((((1, 0, emb[0]),), ((0, 0, emb[0]),)), (same,))
        yield Unit(lit_pair, ((layout.embed, emb), (layout.head, emb)), None, to_lit, "tied head stored too (checked)")
    else:
        same = Same(
            1, 0, f"{LM_HEAD} differs from {WTE}, but the Hugging Face model ties its output head to the embeddings: "
            "converting would silently replace the head", untie or UNTIE,
        )  # fmt: skip
        to_hf = Rows((((1, 0, emb[0]),),), (same,))
        yield Unit(lit_pair, ((layout.embed, emb),), to_hf, None, "lm_head tied to the embeddings")
    experts = c.n_expert if layout.expert else 0
    for i in range(c.n_layer):
        lp, hp, table = f"transformer.h.{i}.", f"{layout.hf_layer}{i}.", c.layer_tensors(i)
        for t in layout.layer:
            yield _unit(t, lp, hp, table, geo)
        for e in range(experts):
            for t in layout.expert:
                yield _unit(t, f"{lp}mlp.experts.{e}.", f"{hp}{layout.expert_prefix}{e}.", table, geo)
    for t in layout.top:
        yield _unit(t, "", "", outer, geo)


UNTIE = (
    "the fine-tune trained the head apart from the embeddings: to keep both, set \"tie_word_embeddings\": false "
    "in the config.json beside lit_model.pth (create it with just that key if there is none)"
)


def _names(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


def plan(
    units: Iterable[Unit],
    tensors: Mapping[str, TensorInfo],
    src: str,
    sink: str,
    to: str,
    *,
    side: str,
    arch: str,
    n_layer: int,
    buffers: str | None = None,
) -> list[Step]:
    """Steps for direction ``to`` ("hf": read the units' lit side; "lit": read their hf side).

    Outputs keep the source dtype (LitGPT's converters do not cast unless asked; the engine casts).
    Tensors matching ``buffers`` (old transformers buffers) are consumed by steps with no output.

    Raises:
        InvalidFile: tensors the config calls for are missing or mis-shaped, or tensors no unit takes
            (listed together), or the config describes far more tensors than the checkpoint holds.
        Unsupported: LoRA / adapter tensors (merge first), a non-float tensor (quantized weights), or one
            unit's tensors in different dtypes (they would be fused by promotion).
    """
    limit = len(tensors) + SLACK
    count = 0
    missing: list[str] = []
    bad: list[str] = []
    taken: set[str] = set()
    steps: list[Step] = []
    for u in units:
        reads, outs, fn = (u.lit, u.hf, u.to_hf) if to == "hf" else (u.hf, u.lit, u.to_lit)
        count += len(reads)
        if count > limit:
            raise InvalidFile(
                f"the config describes more than {limit} tensors for {n_layer} layers but the checkpoint holds "
                f"only {len(tensors)} tensors",
                "the config does not describe these weights",
            )
        absent = [n for n, _ in reads if n not in tensors]
        missing.extend(absent)
        present = [(n, s) for n, s in reads if n in tensors]
        taken.update(n for n, _ in present)
        shaped = [f"{n}: shape {list(tensors[n].shape)}, the config gives {list(s)}" for n, s in present
                  if tuple(tensors[n].shape) != s]  # fmt: skip
        bad.extend(shaped)
        if absent or shaped:
            continue
        dtypes = [tensors[n].dtype for n, _ in reads]
        for (n, _), dt in zip(reads, dtypes):
            if not is_float(dt):
                raise Unsupported(f"{n} is {dt}: quantized or integer weights are not converted")
        if len(set(dtypes)) > 1:
            raise Unsupported(
                f"{', '.join(n for n, _ in reads)} have different dtypes ({', '.join(dtypes)}) and are fused into "
                "one tensor",
                "cast the checkpoint to one dtype first (`ckpt-tool convert --to torch --dtype …`)",
            )
        if fn is None:
            steps += [copy_step(src, reads[0][0], sink, n, dtypes[0], s) for n, s in outs]
            continue
        outs_ = tuple(Out(sink, n, dtypes[0], s) for n, s in outs)
        reads_ = tuple(Read(src, n) for n, _ in reads)
        if isinstance(fn, Rows):
            steps.append(Step(outs_, reads_, None, u.why, fn.segments([s for _, s in reads]), fn.same))
        else:
            steps.append(Step(outs_, reads_, fn, u.why))
    pattern = re.compile(buffers) if buffers else None
    ignored = [n for n in tensors if n not in taken and pattern is not None and pattern.fullmatch(n)]
    extra = [n for n in tensors if n not in taken and n not in set(ignored)]
    lora = [n for n in extra if "lora_" in n]
    if lora:
        raise Unsupported(
            f"{len(lora)} LoRA tensor(s) in the checkpoint, e.g. {lora[0]}: a full-model conversion needs merged weights",
            "merge the adapter first (`ckpt-tool merge`), then convert the merged model",
        )
    adapter = [n for n in extra if "adapter" in n or "gating_factor" in n]
    if adapter:
        raise Unsupported(
            f"{len(adapter)} adapter tensor(s) in the checkpoint, e.g. {adapter[0]}: adapter models do not convert",
            "merge adapter v2 weights first; adapter v1 cannot be expressed as plain weights",
        )
    if missing or extra or bad:
        lines = [f"the {side} checkpoint does not match the {arch} model its config describes"]
        if missing:
            lines.append(f"  {len(missing)} missing: {_names(missing)}")
        if extra:
            lines.append(f"  {len(extra)} not part of that model: {_names(extra)}")
        lines += [f"  {b}" for b in bad[:3]] + ([f"  (+{len(bad) - 3} more shape mismatches)"] if len(bad) > 3 else [])
        raise InvalidFile(
            "\n".join(lines), "the config does not describe these weights (or they are incomplete); nothing was converted"
        )
    for n in ignored:
        steps.append(Step((), (Read(src, n),), _discard, f"{n}: a buffer transformers recomputes (LitGPT drops it too)"))
    return steps


# --- computes (run by the engine; torch imported there; inputs never modified) -----------------------------


def _discard(ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    return []
