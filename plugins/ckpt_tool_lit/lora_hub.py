"""LitGPT LoRA adapters ↔ PEFT LoRA (through the hub): the same delta on every weight, or a refusal saying why not.

The math both sides compute (formats.md §2.3 and §3; ``litgpt/lora.py`` 0.5.13, ``peft/tuners/lora`` 0.21.2):

* LitGPT ``LoRALinear``: ``ΔW = (alpha / r) · B @ A`` with ``A (r, in)``, ``B (out, r)``; one ``r`` and ``alpha`` for
  every module (``hyperparameters.yaml``).
* LitGPT ``LoRAQKVLinear`` (the fused ``attn.qkv``, ``enable_lora = (query, key, value)``): ``A (r·k, in)``,
  ``B (sum of the enabled q/k/v sizes, r)``. The i-th enabled part (in q, k, v order) uses ``A`` rows
  ``[i·r, (i+1)·r)`` and its own row block of ``B`` (``conv1d(groups=k)`` under MHA; ``chunk(k)`` of A and
  ``split(qkv_shapes)`` of B under GQA/MQA: the same grouping) and changes its own rows of the weight; disabled
  parts get zeros (``zero_pad``).
* PEFT LoRA on a Linear ``M``: ``ΔW_M = (lora_alpha / r) · B @ A`` (``alpha / √r`` with rsLoRA), ``r`` and
  ``lora_alpha`` per module through ``rank_pattern`` / ``alpha_pattern``.

Which Hugging Face weight each LitGPT weight row becomes is not written down here a second time: it is read off
the family's own full-model conversion (``fam.to_hf_steps``) run on a synthetic base: the LitGPT state dict the
model config describes (``hub.model_config.LitModel.base_table``, the table the families plan from, checked
against ``litgpt.GPT`` for every registry config by a test). Copy steps are identities; every other step is
run on tiny probe tensors whose values name their source row, so a split (LLaMA's ``q_proj``/``k_proj``/
``v_proj``), a concatenation (Phi-3's ``gate_up_proj``) or a row permutation (GPT-NeoX / Falcon
``query_key_value``) comes out as a row map; a step that is not a row selection (a tied head check) leaves its
modules unmappable, and LoRA on them is refused.

From the row map, each HF module gets exactly the rows LitGPT's delta gives them:

* one LitGPT block covering the whole module (LLaMA ``q_proj`` ← the q part of the qkv LoRA): ``A`` and ``B`` are
  slices, byte for byte, same ``r`` and ``alpha``;
* a module fed by ``n`` blocks (Phi-3 ``qkv_proj`` with q and v enabled, ``gate_up_proj``, NeoX / Falcon
  ``query_key_value``): rank ``n·r``, ``A`` the blocks' ``A`` stacked, ``B`` zero outside each row's own block
  (rows of disabled parts all zero), ``alpha·n``, so ``alpha·n / (r·n)`` is the same float as ``alpha / r``.

Back (PEFT → LitGPT), every LitGPT block takes ``A`` of the one HF module holding its rows and those rows of
``B``; one ``r`` and scale for all (LitGPT has no per-module rank), every layer adapted alike, each LitGPT flag
(``lora_mlp`` adapts all MLP Linears) all or nothing. A PEFT LoRA on a fused HF module therefore becomes LitGPT
blocks sharing one ``A`` (exact), so a LitGPT adapter of a fused family does not come back with its own layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, NotFound, Refused, Unsupported, UsageError
from ckpt_tool.limits import MAX_LORA_SCALE, MAX_PROBE_ROWS
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.transform import HUB, HubResult, HubView, Out, Read, Segment, SideFile, Step, copy_step
from ckpt_tool_lit import keys
from ckpt_tool_lit.config import COPY_CONFIG_FILES, HYPERPARAMETERS, MODEL_CONFIG
from ckpt_tool_lit.convert import OUT, SRC, header, hub_tensors, original_config, source_dir
from ckpt_tool_lit.hub import family_for_hf, family_for_lit
from ckpt_tool_lit.hub.model_config import TABLE_DEFAULTS as TABLE_DEFAULTS  # the tests pin it against litgpt
from ckpt_tool_lit.hub.model_config import LitModel, whole
from ckpt_tool_lit.hub.model_config import _is_num as _num
from ckpt_tool_lit.migrate import LEGACY_CONFIG_KEYS

if TYPE_CHECKING:
    import torch

#: the role under which the family's steps are probed (never a plan input)
_PROBE_IN, _PROBE_OUT = "lit", "hf"
_HUB_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<part>A|B)\.weight$")


def _targets(model: LitModel) -> dict[str, str]:
    """Every module ``litgpt.lora.GPT`` can give LoRA, in state-dict order → its kind (qkv or flag name)."""
    return keys.lora_targets(model.n_layer, model.mlp, model.n_expert)


# --- LoRA blocks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One LitGPT LoRA delta block: weight rows ``[w0, w1)`` of ``module`` get ``s · B[b0 : b0 + w1 - w0] @ A[a0 : a0 + r]``."""

    module: str
    group: str  # query / key / value / projection / mlp / head
    w0: int
    w1: int
    a0: int = 0
    b0: int = 0


def blocks(model: LitModel, module: str, kind: str, enabled: Sequence[bool], r: int, rows: int) -> list[Block]:
    """The blocks of one LoRA module (``rows``: its weight's rows); for the fused qkv only the ``enabled``
    (q, k, v) parts, in that order, as ``LoRAQKVLinear`` lays out A and B."""
    if kind != "qkv":
        return [Block(module, kind, 0, rows)]
    q, k, v = model.geometry.qkv_sizes
    ranges = ((0, q), (q, q + k), (q + k, q + k + v))
    out: list[Block] = []
    b = 0
    for name, on, (lo, hi) in zip(keys.QKV_PARTS, enabled, ranges):
        if on:
            out.append(Block(module, name, lo, hi, len(out) * r, b))
            b += hi - lo
    return out


# --- the row map, read off the family's own full-model conversion ------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Rows ``[dst, dst + n)`` of a Hugging Face weight are rows ``[src, src + n)`` of LitGPT weight ``lit``."""

    lit: str
    src: int
    dst: int
    n: int


@dataclass
class RowMap:
    """Where every row of the LitGPT weights that can carry LoRA lands in the Hugging Face model."""

    hf: dict[str, list[Run]] = field(default_factory=dict)  # HF weight -> its rows, in order
    shape: dict[str, tuple[int, int]] = field(default_factory=dict)  # HF weight -> (rows, cols)
    lit_to_hf: dict[str, list[str]] = field(default_factory=dict)  # LitGPT weight -> HF weights holding its rows
    unmappable: dict[str, str] = field(default_factory=dict)  # LitGPT weight -> why
    all_hf: set[str] = field(default_factory=set)  # every 2-D HF weight of the model (for target clashes)


def _probe(k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Input ``k`` of a step as ``(rows, 2)`` float32 (exact below 2**24 = ``MAX_DIM``): column 0 says which
    input, column 1 which row. 1-D inputs (biases) get distinct values; their outputs are not read."""
    import torch

    rows = shape[0]
    if rows > MAX_PROBE_ROWS:
        raise InvalidFile(f"{MODEL_CONFIG}: a weight with {rows} rows is past the limit of {MAX_PROBE_ROWS}")
    if len(shape) == 1:
        return torch.arange(rows, dtype=torch.float32) - (k + 1) * float(1 << 24)
    return torch.stack((torch.full((rows,), float(k)), torch.arange(rows, dtype=torch.float32)), 1)


def _no_load(role: str, name: str) -> torch.Tensor:
    raise Unsupported(f"conversion step loads {role}:{name} (not a row selection)")


def _decode(t: Any, reads: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> list[Run] | None:
    """The runs of a probed output, or None when it is not a pure selection of whole input rows."""
    import torch

    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != 2 or t.dtype != torch.float32 or not len(t):
        return None
    k, j = t[:, 0], t[:, 1]
    if not (torch.equal(k, k.round()) and torch.equal(j, j.round())):
        return None
    ki, ji = k.long(), j.long()
    if int(ki.min()) < 0 or int(ki.max()) >= len(reads):
        return None
    for idx in set(ki.tolist()):
        shp = shapes[reads[idx]]
        sel = ji[ki == idx]
        if len(shp) != 2 or int(sel.min()) < 0 or int(sel.max()) >= shp[0]:
            return None
    brk = torch.ones(len(t), dtype=torch.bool)
    brk[1:] = (ki[1:] != ki[:-1]) | (ji[1:] != ji[:-1] + 1)
    starts = torch.nonzero(brk).flatten().tolist() + [len(t)]
    return [Run(reads[int(ki[a])], int(ji[a]), a, b - a) for a, b in zip(starts[:-1], starts[1:])]


def _segment_runs(segs: Sequence[Segment], reads: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> list[Run] | None:
    """The runs of a segment step's output (a row permutation, no probe needed), or None when it is not made
    of whole rows of 2-D weights."""
    runs: list[Run] = []
    dst = 0
    for s in segs:
        shape = shapes[reads[s.read]]
        if len(shape) != 2 or s.start % shape[1] or s.count % shape[1]:
            return None
        runs.append(Run(reads[s.read], s.start // shape[1], dst, s.count // shape[1]))
        dst += s.count // shape[1]
    return runs


def row_map(
    fam: Any,
    cfg: Mapping[str, Any],
    model: LitModel,
    tie: Any,
    base: Any,
    probe: Callable[[Step], bool],
) -> RowMap:
    """Run the family's lit → HF steps on a synthetic base; read off where the rows of every LoRA-able LitGPT
    weight go. Copy steps are identities; computed steps are run on probes when ``probe(step)`` says they
    matter (the others cost nothing and stay unmapped)."""
    table = model.base_table()
    tensors = {n: header(n, "F32", s) for n, s in table.items()}
    lora_weights = {f"{m}.weight" for m in _targets(model)}
    steps = fam.to_hf_steps(cfg, tensors, _PROBE_IN, _PROBE_OUT, tie=tie, base=base)
    rm = RowMap()
    for step in steps:
        for o in step.outs:
            if len(o.shape) == 2 and o.name.endswith(".weight"):
                rm.all_hf.add(o.name)
        names = [r.name for r in step.reads]
        mine = [n for n in names if n in lora_weights]
        if not mine:
            continue
        if step.segments is not None:
            runs: list[tuple[str, list[Run] | None]] = [
                (o.name, _segment_runs(segs, names, table)) for o, segs in zip(step.outs, step.segments)
            ]
        elif step.compute is None:
            (o,) = step.outs
            runs = [(o.name, [Run(names[0], 0, 0, o.shape[0])])]
        elif not probe(step):
            continue
        else:
            probes = [_probe(k, table[n]) for k, n in enumerate(names)]
            try:
                results = step.compute(probes, _no_load)
            except Exception as exc:  # noqa: BLE001 - any failure: the step is not a row selection
                why = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                for n in mine:
                    rm.unmappable[n] = f"{step.why or 'its conversion step'} ({why.splitlines()[0][:160]})"
                continue
            runs = [(o.name, _decode(t, names, table)) for o, t in zip(step.outs, results)]
        placed = {n: 0 for n in mine}
        for hf_name, rr in runs:
            if rr is None or not hf_name.endswith(".weight") or not any(r.lit in placed for r in rr):
                continue
            if any(r.lit not in placed for r in rr) or hf_name in rm.hf:
                for n in mine:
                    rm.unmappable[n] = f"{hf_name} mixes it with other tensors ({step.why})"
                continue
            rm.hf[hf_name] = rr
            rm.shape[hf_name] = (sum(r.n for r in rr), table[rr[0].lit][1])
            for r in rr:
                placed[r.lit] += r.n
                rm.lit_to_hf.setdefault(r.lit, [])
                if hf_name not in rm.lit_to_hf[r.lit]:
                    rm.lit_to_hf[r.lit].append(hf_name)
        for n in mine:
            if n not in rm.unmappable and placed[n] != table[n][0]:
                rm.unmappable[n] = f"its rows do not land once each in Hugging Face weights ({step.why or 'a computed step'})"
    return rm


# --- LitGPT → hub ------------------------------------------------------------------------------------------------


def _hf_module(weight: str) -> str:
    return weight[: -len(".weight")]


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


@dataclass
class _Spec:
    """How one HF module's A and B are assembled from LitGPT LoRA tensors (indices into the step's reads)."""

    a: list[tuple[int, int, int]]  # (read, first row, rows) stacked
    b_rows: int
    rank: int
    pieces: list[tuple[int, int, int, int, int]]  # (read of B, B row, HF row, rows, first column)


def _slices(a: tuple[int, int], b: tuple[int, int], ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    """One LitGPT block is the whole HF module: row slices of A and B (views, bits unchanged)."""
    la, lb = ts
    return [la[a[0] : a[0] + a[1]], lb[b[0] : b[0] + b[1]]]


def _assemble(spec: _Spec, ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    """Several LitGPT blocks in one HF module: A stacked, B zero outside each row's own block (values copied)."""
    import torch

    a = torch.cat([ts[i][r0 : r0 + n] for i, r0, n in spec.a])
    first = ts[spec.pieces[0][0]]
    b = first.new_zeros((spec.b_rows, spec.rank))
    r = spec.rank // len(spec.a)
    for i, b0, dst, n, col in spec.pieces:
        b[dst : dst + n, col : col + r] = ts[i][b0 : b0 + n]
    return [a, b]


def _hparams_text(directory: Path | None) -> str | None:
    if directory is None or not (directory / HYPERPARAMETERS).is_file():
        return None
    from ckpt_tool.io.sidefiles import read_text

    return read_text(directory / HYPERPARAMETERS, "the LoRA hyperparameters")


def _assumed(directory: Path | None) -> list[str]:
    """``# ASSUMED: ...`` lines that ``ckpt-tool migrate`` wrote into a hyperparameters.yaml it had to invent."""
    text = _hparams_text(directory)
    if not text:
        return []
    return [
        f"{HYPERPARAMETERS} says ASSUMED: {line.split(':', 1)[1].strip()}"
        for line in text.splitlines()
        if line.strip().startswith("# ASSUMED:")
    ]


def _refuse_kind(source: CheckpointInfo) -> None:
    kind = source.adapter_type
    if kind == "adapter":
        raise Unsupported(
            f"{source.path} is a LitGPT adapter (v1, LLaMA-Adapter prefix tuning): PEFT has no counterpart "
            "(its adaption_prompt gates each layer with one scalar, LitGPT with one value per head)",
            "serve it with 'litgpt generate_adapter', or fine-tune with LoRA to get a PEFT-convertible adapter",
        )
    if kind == "adapter_v2":
        raise Unsupported(
            f"{source.path} is a LitGPT adapter_v2 checkpoint: PEFT has no counterpart for its prefix adapter or "
            "its per-Linear scales and biases",
            "serve it with 'litgpt generate_adapter_v2', or fine-tune with LoRA to get a PEFT-convertible adapter",
        )
    if kind != "lora":
        raise Unsupported(f"{source.path}: a LitGPT {kind or source.kind} is not a LoRA adapter")


def _refuse_legacy(cfg: Mapping[str, Any], where: Any) -> None:
    old = [k for k in cfg if k in LEGACY_CONFIG_KEYS]
    if old:
        raise Unsupported(
            f"{where}: a legacy LitGPT model config (fields {', '.join(old)}), which today's LitGPT does not read",
            "run 'ckpt-tool migrate' on the run directory first; it upgrades the config",
        )


def _lora_settings(source: CheckpointInfo) -> tuple[int, float, tuple[bool, bool, bool], dict[str, bool], Any]:
    """r, alpha, the q/k/v flags, the other flags and dropout, as detection read and checked them."""
    lora = dict(source.lora or {})
    details = source.details or {}
    if details.get("rank_mismatch"):
        rec, seen = details["rank_mismatch"]
        raise Refused(
            f"{source.path}: {HYPERPARAMETERS} says lora_r = {rec} but the LoRA tensors have rank {seen}",
            "the adapter does not match its recorded settings; fix lora_r in hyperparameters.yaml",
        )
    r, alpha = lora.get("r"), lora.get("alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InvalidFile(f"{source.path}: the LoRA rank is unknown or invalid ({r!r})")
    if alpha is None:
        raise Refused(
            f"{source.path}: lora_alpha is unknown (no {HYPERPARAMETERS} records it), so the scale alpha/r that PEFT "
            "needs cannot be read from the tensors",
            f"add 'lora_alpha: <value used in training>' to {HYPERPARAMETERS} next to the adapter (the old lit-gpt "
            "default was 16 with r=8; 'ckpt-tool migrate' writes a hyperparameters.yaml with the old defaults and "
            "marks them ASSUMED)",
        )
    if not _num(alpha) or alpha <= 0 or alpha / r > MAX_LORA_SCALE:
        raise InvalidFile(f"{source.path}: lora_alpha = {alpha!r:.30} is not a usable positive number")
    qkv = tuple(lora.get(f) for f in keys.QKV_PARTS)
    if any(v is None for v in qkv):
        raise Refused(
            f"{source.path}: cannot tell which of query/key/value the attn.qkv LoRA covers (no {HYPERPARAMETERS} "
            "records lora_query/lora_key/lora_value and the shapes fit several choices)",
            f"record the lora_query/lora_key/lora_value flags in {HYPERPARAMETERS} (the old default was query+value)",
        )
    others = {f: bool(lora.get(f)) for f in keys.MODULE_FLAGS}
    return r, alpha, (bool(qkv[0]), bool(qkv[1]), bool(qkv[2])), others, lora.get("dropout")


def _enabled_groups(qkv: tuple[bool, bool, bool], others: Mapping[str, bool]) -> dict[str, bool]:
    return {**dict(zip(keys.QKV_PARTS, qkv)), **others}


def _check_lit_tensors(
    source: CheckpointInfo, model: LitModel, table: Mapping[str, tuple[int, ...]], r: int,
    qkv: tuple[bool, bool, bool], others: Mapping[str, bool],
) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """Every module the flags enable has A and B of the right shapes in every layer; nothing else is there."""
    by_name = {t.name: t for t in source.tensors}
    possible = _targets(model)
    expected = {m: k for m, k in possible.items() if (any(qkv) if k == "qkv" else others.get(k, False))}
    problems: list[str] = []
    legacy = [n for n in by_name if ".attn.attn." in n]
    if legacy:
        raise Unsupported(
            f"{source.path} is a pre-0.5.5 LoRA on the legacy fused attention (attn.attn): where its q/k/v deltas "
            "land depends on the LitGPT era that wrote it (formats.md §2.4), which the file does not record",
            "merge it with the LitGPT release that trained it and convert the merged model instead",
        )
    part = {n: p[0] for n in by_name if (p := keys.lora_part(n))}  # LoRA tensor → its module
    unknown = sorted(n for n in by_name if part.get(n) not in expected)
    if unknown:
        stray = [n for n in unknown if part.get(n) in possible]
        if stray:
            mods = sorted({part[n] for n in stray})
            kinds = sorted({possible[m] if possible[m] != "qkv" else "query/key/value" for m in mods})
            problems.append(
                f"LoRA tensors on {len(mods)} module(s) whose lora_{'/lora_'.join(kinds)} flag is off in "
                f"{HYPERPARAMETERS} (e.g. {mods[0]})"
            )
        rest = [n for n in unknown if n not in stray]
        if rest:
            problems.append(f"{len(rest)} tensor(s) are not LoRA tensors of this model (e.g. {rest[0]!r})")
    missing: dict[str, list[int]] = {}
    out: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for m, kind in expected.items():
        a, b = by_name.get(f"{m}.lora_A"), by_name.get(f"{m}.lora_B")
        if a is None or b is None:
            missing.setdefault(keys.any_layer(m), []).append(-1 if (x := keys.layer_of(m)) is None else x)
            continue
        cols = table[f"{m}.weight"][1]
        parts = blocks(model, m, kind, qkv, r, table[f"{m}.weight"][0])
        want_a = (r * len(parts), cols)
        want_b = (sum(p.w1 - p.w0 for p in parts), r)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            problems.append(
                f"{m}: lora_A {list(a.shape)} / lora_B {list(b.shape)}, the model config and r={r} give "
                f"{list(want_a)} / {list(want_b)}"
            )
            continue
        if a.dtype != b.dtype:
            problems.append(f"{m}: lora_A is {a.dtype}, lora_B {b.dtype}")
            continue
        out[m] = (a, b)
    for key, layers in missing.items():
        where = keys.layers_text(x for x in layers if x >= 0)
        problems.append(
            f"{HYPERPARAMETERS} enables LoRA on {key} but the adapter has no lora_A/lora_B for it"
            + (f" in {where}" if where else "")
        )
    if problems:
        raise Refused(
            f"{source.path}: the LoRA tensors do not match the recorded settings and model config:\n  - "
            + "\n  - ".join(problems[:8]),
            "check hyperparameters.yaml and model_config.yaml against the training run; nothing was written",
        )
    return out


def lora_to_hub(source: CheckpointInfo, options: Any) -> HubView:
    """A LitGPT LoRA ``final/`` (``lit_model.pth.lora`` + ``hyperparameters.yaml`` + ``model_config.yaml``) in
    PEFT's key grammar without ``base_model.model.``, with PEFT ``LoraConfig`` settings.

    Raises:
        Unsupported: adapter v1/v2, legacy ``attn.attn`` LoRA, LoRA on modules without an exact PEFT equivalent
            (MoE experts, a tied head), a family transformers cannot express.
        Refused: unknown alpha, ambiguous q/k/v flags, tensors that disagree with the recorded settings.
        InvalidFile: no model config, invalid values.
    """
    _refuse_kind(source)
    details = source.details or {}
    cfg = details.get("model_config")
    directory = source_dir(source)
    if not cfg:
        raise InvalidFile(
            f"{source.path}: no {MODEL_CONFIG} beside the adapter, so the architecture (q/k/v sizes, module names) "
            "is unknown",
            f"copy the {MODEL_CONFIG} of the base model into {directory}",
        )
    _refuse_legacy(cfg, directory / MODEL_CONFIG)
    r, alpha, qkv, others, dropout = _lora_settings(source)
    model = LitModel(cfg)
    table = model.base_table()
    present = _check_lit_tensors(source, model, table, r, qkv, others)
    if model.mlp == "LLaMAMoE" and others["mlp"]:
        raise Unsupported(
            f"{source.path}: lora_mlp on a mixture-of-experts model: transformers 5 stores the experts as fused 3-D "
            "parameters and the router is not a Linear, so PEFT LoRA has no module for LitGPT's per-expert LoRA",
            "fine-tune with lora_mlp false (attention LoRA converts), or merge the adapter and convert the model",
        )
    fam = family_for_lit(cfg)
    base_cfg = original_config(directory)
    mine = {f"{m}.weight" for m in present}
    rm = row_map(fam, cfg, model, options.tie, base_cfg, lambda st: any(r.name in mine for r in st.reads))
    for m in present:
        why = rm.unmappable.get(f"{m}.weight")
        if why is not None:
            hint = "the converted model ties lm_head to the embeddings" if m == "lm_head" else why
            raise Unsupported(
                f"{source.path}: LoRA on {m} has no exact PEFT equivalent in Hugging Face {fam.name}: {hint}",
                "fine-tune without lora_head for a tied model, or merge the adapter and convert the model"
                if m == "lm_head"
                else "merge the adapter and convert the merged model",
            )
    kinds = _targets(model)
    parts = {m: blocks(model, m, kinds[m], qkv, r, table[f"{m}.weight"][0]) for m in present}
    steps: list[Step] = []
    modules: dict[str, dict[str, Any]] = {}
    for hf_weight, runs in rm.hf.items():
        step, n = _forward_step(hf_weight, runs, rm.shape[hf_weight], parts, present, r)
        if step is None:
            continue
        steps.extend(step)
        modules[_hf_module(hf_weight)] = {"r": r * n, "alpha": whole(alpha * n), "scale": alpha / r}
        if (alpha * n) / (r * n) != alpha / r:
            raise Unsupported(f"lora_alpha {alpha!r} × {n} is not exact in floating point; PEFT's scale would differ")
    targets = sorted({_short(m) for m in modules})
    clash = sorted(w for w in rm.all_hf if _short(_hf_module(w)) in targets and _hf_module(w) not in modules)
    if clash:
        raise Unsupported(
            f"PEFT target_modules {targets} would also select {clash[0]}, which the LitGPT LoRA does not adapt "
            "(plugin limitation: module names are matched by their last component)"
        )
    base_name, notes = _base_name(options, details, directory)
    notes += _assumed(directory)
    if (source.lora or {}).get("source") == "tensors":
        notes.append(f"no {HYPERPARAMETERS}: r and the adapted modules come from the tensor shapes")
    fused = {m: v for m, v in modules.items() if v["r"] != r}
    if fused:
        first = next(iter(fused))
        notes.append(
            f"{len(fused)} Hugging Face module(s) fuse several LitGPT LoRA blocks (e.g. {first}: rank "
            f"{fused[first]['r']}, alpha {fused[first]['alpha']}, B zero outside each block): PEFT gets them through "
            "rank_pattern/alpha_pattern, the delta is the same"
        )
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": whole(alpha),
        "lora_dropout": float(dropout) if _num(dropout) else 0.0,
        "target_modules": targets,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "lora_bias": False,
        "modules_to_save": None,
    }
    extra = {
        "family": fam.name,
        "model_config": dict(cfg),
        "modules": modules,
        "lit": {"r": r, "alpha": alpha, **_enabled_groups(qkv, others)},
    }
    return HubView("adapter", steps, config, {}, extra, notes)


def _base_name(options: Any, details: Mapping[str, Any], directory: Path) -> tuple[str | None, list[str]]:
    """``base_model_name_or_path``: ``--base``, else what LitGPT recorded, else null (with a note)."""
    if getattr(options, "base", None):
        return str(options.base), []
    hp = details.get("hyperparameters") or {}
    rec = hp.get("checkpoint_dir")
    if isinstance(rec, str) and rec:
        return rec, [
            f"base_model_name_or_path = {rec!r}, the checkpoint_dir LitGPT recorded (a LitGPT checkpoint directory, "
            "not necessarily a transformers model id); pass --base <HF id or directory> to record the Hugging Face base"
        ]
    return None, [
        "base_model_name_or_path is null: nothing records the base model; pass --base <HF id or directory>"
    ]


def _forward_step(
    hf_weight: str,
    runs: Sequence[Run],
    shape: tuple[int, int],
    parts: Mapping[str, list[Block]],
    present: Mapping[str, tuple[TensorInfo, TensorInfo]],
    r: int,
) -> tuple[list[Step] | None, int]:
    """The step(s) writing one HF module's ``lora_A.weight`` / ``lora_B.weight``, and how many blocks it fuses."""
    touched: dict[Block, int] = {}
    pieces: list[tuple[Block, int, int, int]] = []  # (block, B row, HF row, rows)
    for run in runs:
        mod = _hf_module(run.lit)
        if mod not in present:
            continue
        for blk in parts[mod]:
            lo, hi = max(run.src, blk.w0), min(run.src + run.n, blk.w1)
            if lo < hi:
                touched.setdefault(blk, len(touched))
                pieces.append((blk, blk.b0 + lo - blk.w0, run.dst + lo - run.src, hi - lo))
    if not touched:
        return None, 0
    m = _hf_module(hf_weight)
    n = len(touched)
    rows, cols = shape
    mods = list(dict.fromkeys(b.module for b in touched))
    dtypes = {present[x][0].dtype for x in mods}
    if len(dtypes) > 1:
        raise Unsupported(
            f"{m} gathers LoRA tensors of different dtypes ({', '.join(sorted(dtypes))}) from {', '.join(mods)}",
            "cast the adapter to one dtype first",
        )
    dt = dtypes.pop()
    outs = (Out(HUB, f"{m}.lora_A.weight", dt, (n * r, cols)), Out(HUB, f"{m}.lora_B.weight", dt, (rows, n * r)))
    la, lb = present[mods[0]]
    if n == 1 and len(pieces) == 1 and pieces[0][2] == 0 and pieces[0][3] == rows:
        blk, b0, _, _ = pieces[0]
        if blk.a0 == 0 and la.shape[0] == r and b0 == 0 and lb.shape[0] == rows:
            return [
                copy_step(SRC, la.name, HUB, outs[0].name, dt, outs[0].shape, f"{blk.module} LoRA A as {m}"),
                copy_step(SRC, lb.name, HUB, outs[1].name, dt, outs[1].shape, f"{blk.module} LoRA B as {m}"),
            ], 1
        fn = partial(_slices, (blk.a0, r), (b0, rows))
        why = f"{blk.module} LoRA, {blk.group} block → {m}"
        return [Step(outs, (Read(SRC, la.name), Read(SRC, lb.name)), fn, why)], 1
    reads: list[Read] = []
    for x in mods:
        reads += [Read(SRC, f"{x}.lora_A"), Read(SRC, f"{x}.lora_B")]
    idx = {x: 2 * i for i, x in enumerate(mods)}
    order = sorted(touched, key=touched.__getitem__)
    spec = _Spec(
        a=[(idx[b.module], b.a0, r) for b in order],
        b_rows=rows,
        rank=n * r,
        pieces=[(idx[b.module] + 1, b0, dst, k, touched[b] * r) for b, b0, dst, k in pieces],
    )
    groups = "+".join(b.group for b in order)
    why = f"{', '.join(mods)} LoRA ({groups}) fused into {m}: rank {n * r}, B zero outside each block"
    return [Step(outs, tuple(reads), partial(_assemble, spec), why)], n


# --- hub → LitGPT ------------------------------------------------------------------------------------------------


def _base_model(options: Any) -> tuple[dict[str, Any], Any, Path, str, Any]:
    """(LitGPT model config, family, base dir, "lit" | "hf", the HF config.json deciding ties) from ``--base``:
    a LitGPT checkpoint dir (``model_config.yaml``) or a Hugging Face model dir (``config.json``), or that file."""
    from ckpt_tool.io.sidefiles import read_json
    from ckpt_tool_lit.config import read_yaml_mapping

    raw = getattr(options, "base", None)
    if not raw:
        raise UsageError(
            "a PEFT adapter does not record the architecture of its base model, which LitGPT's LoRA files need "
            "(q/k/v sizes, model_config.yaml)",
            "pass the base with --base <Hugging Face model dir or LitGPT checkpoint dir>",
        )
    p = Path(str(raw)).expanduser()
    if not p.exists():
        raise NotFound(
            f"--base {raw}: no such file or directory (convert is offline: a Hub id cannot be used)",
            "pass the local Hugging Face model dir or LitGPT checkpoint dir of the base",
        )
    directory = p if p.is_dir() else p.parent
    names = (p.name,) if p.is_file() else (MODEL_CONFIG, "config.json")
    found = next((directory / n for n in names if n in (MODEL_CONFIG, "config.json") and (directory / n).is_file()), None)
    if found is None:
        raise NotFound(
            f"--base {raw}: neither {MODEL_CONFIG} (LitGPT) nor config.json (Hugging Face) is there",
            "pass the base model's directory",
        )
    original = None
    if (directory / "config.json").is_file():
        original = read_json(directory / "config.json", "the base model's config.json")
        if not isinstance(original, dict):
            raise InvalidFile(f"{directory / 'config.json'}: expected a JSON object")
    if found.name == MODEL_CONFIG:
        cfg = read_yaml_mapping(found)
        _refuse_legacy(cfg, found)
        return dict(cfg), family_for_lit(cfg), directory, "lit", original
    assert original is not None
    fam = family_for_hf(original)
    return fam.lit_config(original), fam, directory, "hf", original


def _refuse_variants(view: HubView) -> None:
    """Everything that is not ``W + (alpha/r)·B@A`` on Linears has no LitGPT LoRA form."""
    cfg = view.config or {}
    why: list[str] = list((view.extra or {}).get("not_plain_lora") or [])
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        why.append(f"peft_type {cfg.get('peft_type')!r} (LitGPT has plain LoRA only)")
    if cfg.get("use_dora") and not any("DoRA" in w for w in why):
        why.append("use_dora: DoRA rescales every weight row by a learned magnitude, LitGPT's LoRA has no magnitude")
    if cfg.get("lora_bias") and not any("lora_bias" in w for w in why):
        why.append("lora_bias: PEFT trains a bias with lora_B, LitGPT's LoRA has none")
    if why:
        raise Unsupported(
            "the PEFT adapter cannot be expressed as a LitGPT LoRA: " + "; ".join(why),
            "merge it into the base with 'ckpt-tool merge' and convert the merged model instead",
        )


def _hub_modules(view: HubView) -> tuple[dict[str, dict[str, TensorInfo]], dict[str, TensorInfo]]:
    """LoRA tensors of the view by HF module (A / B), and every hub tensor by name; refuses non-LoRA tensors."""
    tensors = hub_tensors(view)
    modules: dict[str, dict[str, TensorInfo]] = {}
    kinds: dict[str, list[str]] = {}
    for name, t in tensors.items():
        m = _HUB_LORA.match(name)
        if m:
            modules.setdefault(m["mod"], {})[m["part"]] = t
            continue
        if name.endswith("lora_magnitude_vector"):
            kinds.setdefault("DoRA magnitude vectors (lora_magnitude_vector): LitGPT's LoRA has no magnitude", []).append(name)
        elif ".lora_B.bias" in name:
            kinds.setdefault("lora_B.bias (lora_bias): LitGPT's LoRA has no bias", []).append(name)
        elif "lora_embedding_" in name:
            kinds.setdefault("embedding LoRA (lora_embedding_A/B): LitGPT's LoRA adapts Linears only", []).append(name)
        elif "lora_" in name:
            kinds.setdefault("unknown LoRA tensors", []).append(name)
        else:
            kinds.setdefault(
                "full tensors (modules_to_save, trained biases or embeddings): a LitGPT .lora file holds only LoRA "
                "matrices", []
            ).append(name)
    if kinds:
        raise Unsupported(
            "the PEFT adapter holds tensors a LitGPT LoRA cannot carry: "
            + "; ".join(f"{len(v)} {k} (e.g. {v[0]!r})" for k, v in kinds.items()),
            "merge it into the base with 'ckpt-tool merge' and convert the merged model instead",
        )
    broken = [m for m, p in modules.items() if set(p) != {"A", "B"}]
    if broken:
        raise InvalidFile(f"the PEFT adapter has lora_A without lora_B (or the reverse) for {broken[0]}")
    return modules, tensors


def _lit_alpha(scale: float, r: int) -> int | None:
    """An integer LitGPT ``lora_alpha`` with ``alpha / r`` equal to PEFT's scale bit for bit, if there is one."""
    if not _num(scale) or scale <= 0:
        return None
    alpha = round(scale * r)
    return alpha if alpha > 0 and alpha / r == scale else None


@dataclass
class _Cover:
    """Which HF module holds the rows of one LitGPT block, and where (runs over the block's rows)."""

    hf: str
    runs: list[tuple[int, int, int]] = field(default_factory=list)  # (HF row, LitGPT row, rows)


def lora_from_hub(view: HubView, options: Any) -> HubResult:
    """A PEFT LoRA (in hub naming) → LitGPT ``lit_model.pth.lora`` + ``hyperparameters.yaml`` + ``model_config.yaml``.

    Raises:
        UsageError: no ``--base`` (PEFT adapters do not record the architecture).
        Unsupported: what LitGPT's LoRA cannot express (DoRA, lora_bias, embedding LoRA, modules_to_save, LoRA on
            some layers only, on part of an MLP, on modules LitGPT cannot adapt, differing ranks or scales, rsLoRA
            without an integer alpha giving the same scale).
        Refused: an adapter that does not fit the base's shapes.
    """
    _refuse_variants(view)
    hub, _ = _hub_modules(view)
    if not hub:
        raise Refused("the PEFT adapter holds no LoRA tensors", "nothing to convert")
    cfg, fam, base_dir, base_kind, base_hf = _base_model(options)
    model = LitModel(cfg)
    table = model.base_table()
    possible = _targets(model)
    adapted = {f"{m}.weight" for m in hub}
    rm = row_map(
        fam, cfg, model, getattr(options, "tie", None), base_hf, lambda st: any(o.name in adapted for o in st.outs)
    )
    per_module = (view.extra or {}).get("modules") or {}
    patterns = (view.config or {}).get("rank_pattern") or (view.config or {}).get("alpha_pattern")
    if patterns and not per_module:
        raise Unsupported("the adapter uses rank_pattern/alpha_pattern but the view does not resolve them (plugin bug)")

    # where each LitGPT block's rows are, for every block any HF module covers
    all_blocks = {m: blocks(model, m, k, (True, True, True), 1, table[f"{m}.weight"][0]) for m, k in possible.items()}
    cover: dict[Block, _Cover] = {}
    problems: list[str] = []
    rank_scale: dict[tuple[int, float], list[str]] = {}
    for hm, ab in hub.items():
        w = f"{hm}.weight"
        a, b = ab["A"], ab["B"]
        if w not in rm.hf:
            lit_of = [x for x, hs in rm.lit_to_hf.items() if w in hs]
            why = next((rm.unmappable[x] for x in lit_of if x in rm.unmappable), None)
            problems.append(
                f"{hm}: not a module LitGPT's LoRA can adapt in this {fam.name} model"
                + (f" ({why})" if why else " (an embedding, a norm, or a module of another architecture)")
            )
            continue
        rows, cols = rm.shape[w]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1] or 0 in a.shape or 0 in b.shape:
            problems.append(f"{hm}: lora_A {list(a.shape)} / lora_B {list(b.shape)} are not a LoRA pair")
            continue
        if a.shape[1] != cols or b.shape[0] != rows:
            raise Refused(
                f"the adapter does not fit the base: {hm} has LoRA for a {b.shape[0]}×{a.shape[1]} weight, the base's "
                f"is {rows}×{cols}",
                "pass the base model the adapter was trained on with --base",
            )
        info = per_module.get(hm) or {}
        r_m = a.shape[0]
        if info.get("r") not in (None, r_m):
            raise InvalidFile(f"{hm}: LoRA rank {r_m} in the tensors, {info['r']} in adapter_config.json")
        scale = info.get("scale")
        if scale is None:
            alpha_m = (view.config or {}).get("lora_alpha", 8)
            scale = alpha_m / r_m if _num(alpha_m) else None
        if not _num(scale) or scale <= 0 or scale > MAX_LORA_SCALE:
            raise InvalidFile(f"{hm}: LoRA scale {scale!r:.30} is not a usable positive number")
        rank_scale.setdefault((r_m, scale), []).append(hm)
        for run in rm.hf[w]:
            mod = _hf_module(run.lit)
            for blk in all_blocks.get(mod, ()):
                lo, hi = max(run.src, blk.w0), min(run.src + run.n, blk.w1)
                if lo >= hi:
                    continue
                c = cover.setdefault(blk, _Cover(hm))
                if c.hf != hm:
                    problems.append(f"{blk.module} ({blk.group}) takes rows from both {c.hf} and {hm}")
                    continue
                c.runs.append((run.dst + lo - run.src, lo, hi - lo))
    if problems:
        raise Unsupported(
            "the PEFT adapter cannot be expressed as a LitGPT LoRA:\n  - " + "\n  - ".join(problems[:8]),
            "LitGPT adapts attn.qkv (query/key/value), attn.proj, the MLP Linears and lm_head",
        )
    if len(rank_scale) > 1:
        shown = "; ".join(f"r={k[0]}, scale={k[1]:.6g}: {v[0]}" + (f" (+{len(v) - 1})" if len(v) > 1 else "")
                          for k, v in list(rank_scale.items())[:4])
        raise Unsupported(
            f"the adapted modules differ in rank or scale (rank_pattern/alpha_pattern, or fused modules): {shown}; "
            "LitGPT's LoRA has one lora_r and one lora_alpha for every module",
            "merge the adapter with 'ckpt-tool merge' and convert the merged model instead (a LitGPT LoRA converted "
            "to PEFT for a model with fused qkv_proj / query_key_value / gate_up_proj has such ranks: keep and convert "
            "the LitGPT original)",
        )
    (r, scale), _ = next(iter(rank_scale.items()))
    alpha = _lit_alpha(scale, r)
    if alpha is None:
        rs = bool((view.config or {}).get("use_rslora"))
        raise Unsupported(
            f"the PEFT scale {scale!r} (rank {r}" + (", rsLoRA alpha/√r" if rs else "") + ") needs lora_alpha = "
            f"{scale * r!r} in LitGPT, which has integer alphas and computes alpha/r: no integer gives the same scale",
            "rsLoRA converts exactly when √r is an integer (r = 1, 4, 9, 16, 64, …); otherwise merge the adapter",
        )

    # every LitGPT flag all or nothing, in every layer
    groups: dict[str, list[Block]] = {}
    for blist in all_blocks.values():
        for blk in blist:
            groups.setdefault(blk.group, []).append(blk)
    flags: dict[str, bool] = {}
    for g in keys.LORA_FLAGS:
        members = groups.get(g, [])
        have = [blk for blk in members if blk in cover]
        flags[g] = bool(have)
        if have and len(have) != len(members):
            lack = [blk for blk in members if blk not in cover]
            names = sorted({keys.any_layer(blk.module) for blk in lack})
            where = keys.layers_text(x for blk in lack if (x := keys.layer_of(blk.module)) is not None)
            what = {"mlp": "every MLP Linear (lora_mlp)", "projection": "attn.proj (lora_projection)",
                    "head": "lm_head (lora_head)"}.get(g, f"the {g} part of attn.qkv (lora_{g})")
            problems.append(
                f"LoRA on {what} must cover every layer and Linear alike; missing for {', '.join(names[:3])}"
                + (f" in {where}" if where else "")
            )
    if model.mlp == "LLaMAMoE" and flags["mlp"]:
        problems.append("LoRA on mixture-of-experts MLPs: not converted (transformers 5 fuses the experts)")
    if problems:
        raise Unsupported(
            "the PEFT adapter cannot be expressed as a LitGPT LoRA:\n  - " + "\n  - ".join(problems[:8]),
            "LitGPT's flags (lora_query/key/value/projection/mlp/head) adapt a module kind in every layer",
        )

    qkv = tuple(flags[g] for g in keys.QKV_PARTS)
    steps: list[Step] = []
    for mod, kind in possible.items():
        if not (any(qkv) if kind == "qkv" else flags[kind]):
            continue
        steps += _backward_step(mod, blocks(model, mod, kind, qkv, r, table[f"{mod}.weight"][0]), cover, hub, r)
    hp_flags = {f"lora_{g}": flags[g] for g in keys.LORA_FLAGS}
    dropout = (view.config or {}).get("lora_dropout", 0.0)
    checkpoint_dir, notes = _checkpoint_dir(options, base_kind, view)
    hp: dict[str, Any] = {
        **({"checkpoint_dir": checkpoint_dir} if checkpoint_dir else {}),
        "lora_r": r,
        "lora_alpha": alpha,
        "lora_dropout": float(dropout) if _num(dropout) else 0.0,
        **hp_flags,
    }
    import yaml

    head = "# Written by ckpt-tool convert from a PEFT LoRA adapter (only the LoRA settings are known).\n"
    side = [SideFile(HYPERPARAMETERS, data=(head + yaml.safe_dump(hp, sort_keys=False)).encode())]
    if base_kind == "lit":
        side.append(SideFile(MODEL_CONFIG, src=base_dir / MODEL_CONFIG) if (base_dir / MODEL_CONFIG).is_file()
                    else SideFile(MODEL_CONFIG, data=yaml.safe_dump(cfg, sort_keys=False).encode()))
    else:
        side.append(SideFile(MODEL_CONFIG, data=yaml.safe_dump(cfg, sort_keys=False).encode()))
    from ckpt_tool.io.sidefiles import travelling_files

    travel = {"config.json": base_dir / "config.json"} if (base_dir / "config.json").is_file() else {}
    travel.update(travelling_files(base_dir))
    side += [SideFile(n, src=p) for n, p in travel.items() if n in COPY_CONFIG_FILES and n != MODEL_CONFIG]
    if view.config.get("use_rslora"):
        notes.append(f"rsLoRA scale alpha/√r = {scale!r} kept exactly as lora_alpha = {alpha} with r = {r}")
    summary = {"family": fam.name, "lora": {"r": r, "alpha": alpha, **{g: flags[g] for g in keys.LORA_FLAGS}}}
    # a merged lit_model.pth beside a new adapter would be taken for its merge (LitGPT does not look): stale
    options = {"weights_name": keys.WEIGHTS_NAME[keys.LORA], "wrapper": "model", "stale_names": [keys.WEIGHTS_NAME[keys.FULL]]}
    return HubResult(steps, side, options, summary, notes)


def _checkpoint_dir(options: Any, base_kind: str, view: HubView) -> tuple[str | None, list[str]]:
    """``checkpoint_dir`` for hyperparameters.yaml: a LitGPT ``--base`` as given, else PEFT's recorded base id."""
    if base_kind == "lit":
        return str(options.base), []
    rec = (view.config or {}).get("base_model_name_or_path")
    notes = [
        "LitGPT merges and generates from a LitGPT checkpoint dir: convert the base with "
        f"'ckpt-tool convert {options.base} --to lit --out DIR' and set checkpoint_dir in {HYPERPARAMETERS}"
    ]
    if isinstance(rec, str) and rec:
        notes[0] += (
            f"; it records {rec!r}, PEFT's base_model_name_or_path, which LitGPT resolves as given or under checkpoints/"
        )
        return rec, notes
    return None, notes


def _backward_step(
    mod: str,
    blist: list[Block],
    cover: Mapping[Block, _Cover],
    hub: Mapping[str, Mapping[str, TensorInfo]],
    r: int,
) -> list[Step]:
    """The step writing one LitGPT module's ``lora_A`` / ``lora_B`` from the HF modules holding its rows."""
    full = {b.group: b for b in cover if b.module == mod}
    hf_mods: list[str] = []
    a_parts: list[int] = []
    b_parts: list[tuple[int, int, int]] = []  # (read index of B, HF row, rows) in LitGPT row order
    for blk in blist:
        c = cover[full[blk.group]]
        if c.hf not in hf_mods:
            hf_mods.append(c.hf)
        i = hf_mods.index(c.hf)
        a_parts.append(2 * i)
        runs = sorted(c.runs, key=lambda x: x[1])
        at = blk.w0
        for hf_row, lit_row, n in runs:
            if lit_row != at:
                raise Unsupported(f"{mod}: rows {at}-{lit_row} of the {blk.group} block have no LoRA rows (plugin bug)")
            b_parts.append((2 * i + 1, hf_row, n))
            at += n
        if at != blk.w1:
            raise Unsupported(f"{mod}: the {blk.group} block is only partly covered (plugin bug)")
    reads: list[Read] = []
    for h in hf_mods:
        reads += [Read(HUB, f"{h}.lora_A.weight"), Read(HUB, f"{h}.lora_B.weight")]
    dtypes = {hub[h][p].dtype for h in hf_mods for p in ("A", "B")}
    if len(dtypes) > 1:
        raise Unsupported(f"{mod} gathers LoRA tensors of different dtypes ({', '.join(sorted(dtypes))})")
    dt = dtypes.pop()
    cols = hub[hf_mods[0]]["A"].shape[1]
    rows = sum(b.w1 - b.w0 for b in blist)
    outs = (Out(OUT, f"{mod}.lora_A", dt, (r * len(blist), cols)), Out(OUT, f"{mod}.lora_B", dt, (rows, r)))
    why = f"{', '.join(hf_mods)} LoRA → {mod} ({'+'.join(b.group for b in blist)})"
    if len(hf_mods) == 1 and len(blist) == 1 and b_parts == [(1, 0, hub[hf_mods[0]]["B"].shape[0])]:
        return [  # the HF module is exactly the LitGPT module: A and B as they are
            Step((outs[0],), (reads[0],), None, why),
            Step((outs[1],), (reads[1],), None, why),
        ]
    return [Step(outs, tuple(reads), partial(_gather, tuple(a_parts), tuple(b_parts)), why)]


def _gather(
    a_parts: tuple[int, ...], b_parts: tuple[tuple[int, int, int], ...], ts: Sequence[torch.Tensor], load: Any
) -> list[torch.Tensor]:
    """LitGPT's A = the blocks' A stacked in q, k, v order; B = their rows, in LitGPT row order (values copied)."""
    import torch

    a = torch.cat([ts[i] for i in a_parts]) if len(a_parts) > 1 else ts[a_parts[0]]
    b = torch.cat([ts[i][h : h + n] for i, h, n in b_parts]) if len(b_parts) > 1 else ts[b_parts[0][0]][
        b_parts[0][1] : b_parts[0][1] + b_parts[0][2]
    ]
    return [a, b]
