"""``split --extract-lora``: a PEFT LoRA adapter from a full fine-tune, by truncated SVD of its weight deltas.

For every targeted Linear weight ``D = W_ft - W_base`` is factored to rank R with
the Eckart-Young optimum: ``B = U_R·S_R`` (``lora_B``, ``(out, R)``) and
``A = Vh_R`` (``lora_A``, ``(R, in)``), so ``B@A`` is the best rank-R approximation
of ``D`` in the Frobenius norm. The scale is exactly 1 (``lora_alpha = r``,
``use_rslora`` false): the adapter's ``ΔW`` is ``B@A`` itself.

Why this split and these dtypes:

* ``A = Vh_R`` has orthonormal rows, so the singular values live in ``B`` only
  and ``||B||_F² `` is the retained energy; with fp32 storage the split does not
  matter for accuracy (a balanced ``√S`` split only helps low-precision storage).
* The delta is taken in fp64: bf16/fp16/fp32 weights are exact in fp64 and so is
  their difference, so no cancellation error enters before the SVD.
* The SVD is the eigendecomposition of the Gram matrix of the smaller side
  (``D·Dᵀ`` or ``Dᵀ·D``, ``min(out, in)`` square) in fp64: the spectrum by
  ``eigvalsh`` (exact to ~1e-13 of the top energy), the top R eigenvectors by an
  fp32 start refined in fp64 (``_top_eigenvectors``). That is several times faster
  than a full SVD of ``D`` on CPU and what the kept components need (randomised
  ``svd_lowrank`` is not optimal; an fp32 SVD loses the small tail the error is
  measured against).
* The factors are stored in **fp32**, whatever the models' dtype: fp32 rounding
  adds ~1e-7 of ``||D||`` to the error, so the reconstruction error stays within
  1% of the optimum even for an (almost) exactly low-rank delta, whose optimum is
  ~0; bf16 factors would add ~0.3% of ``||D||`` and break that bound. PEFT
  computes LoRA in fp32 anyway (it upcasts adapter weights by default).

Every module is computed in its own step (two tensors read, two written), so
memory is one module's delta, not the model. Which modules differ at all is
found before the plan is made (a comparison pass over both models' tensors,
reading page cache), because a plan's outputs are fixed before a byte is
written: a module whose delta is exactly zero gets no tensors.

What a LoRA of Linears cannot carry (changed norms, biases, embeddings, and
Linears left out by ``--targets``) is not silently dropped: each such tensor is
named in a warning with the size of its change, and listed in the JSON. That is a
warning, not a refusal, because an extracted adapter is an approximation by
construction and nearly every full fine-tune also moves its norms; refusing would
make extraction impossible without telling the user more than the warning does.
What would make the adapter *wrong* for the base it names is refused: tensors
present in one model only, shapes that differ, non-finite deltas.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import Refused, Unsupported, UsageError
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.transform import HUB, HubView, Out, Read, Sink, Step, TransformPlan, compose

if TYPE_CHECKING:
    import torch

FT = "finetuned"
BASE = "base"
OUT = "out"
#: The stored dtype of ``lora_A`` / ``lora_B`` (see the module docstring).
FACTOR_DTYPE = "F32"
#: Module names (last component) of embeddings: a LoRA of Linears cannot represent them.
EMBEDDINGS = frozenset({
    "embed_tokens", "wte", "wpe", "embed_positions", "word_embeddings", "position_embeddings",
    "token_type_embeddings", "embed_in", "shared", "tok_embeddings",
})  # fmt: skip
#: Output heads: Linears, extracted only when ``--targets`` names them (they are usually tied or huge).
HEADS = frozenset({"lm_head", "embed_out"})
#: Model types whose projection weights are GPT-2 ``Conv1D`` (stored ``(in, out)``), not Linear.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
#: Elements per fp64 slice when measuring the change of a tensor that is not extracted.
_CHUNK = 1 << 22
#: Singular values below this fraction of the largest are taken as zero (the Gram eigenvalues' noise floor).
ZERO_SV = 1e-7


def parse_rank(value: Any) -> int:
    """``--rank``: a whole number >= 1."""
    try:
        r = int(str(value).strip())
    except (TypeError, ValueError):
        r = 0
    if r < 1:
        raise UsageError(f"invalid --rank {value!r}", "give the LoRA rank as a whole number >= 1, e.g. 16")
    return r


@dataclass
class Module:
    """One extracted Linear: its weight name, shape (out, in) and the rank it gets (R clamped to min(shape))."""

    name: str
    weight: str
    shape: tuple[int, int]
    rank: int
    stats: dict[str, float] = field(default_factory=dict)  # filled while the step runs


@dataclass
class Extraction:
    """The plan and what the user must see about it."""

    plan: TransformPlan
    modules: list[Module]
    unchanged: list[str]
    not_represented: list[dict[str, Any]]
    notes: list[str]
    warnings: list[str]
    config: dict[str, Any]


# --- inputs ------------------------------------------------------------------------------------------------


def _check_input(info: CheckpointInfo, flag: str) -> None:
    if info.kind != "model":
        raise Refused(
            f"{flag} {info.path} is {info.adapter_type or info.kind} ({info.description or info.format}), not a full model",
            "extraction compares two full models: the fine-tune and the base it was trained from",
        )
    if info.format == "lit":
        raise Unsupported(
            f"{flag} {info.path} is a LitGPT checkpoint: the adapter must name the Hugging Face modules PEFT loads",
            "convert both models first with 'ckpt-tool convert MODEL --to hf --out DIR', then extract from the HF dirs",
        )
    if info.format not in ("safetensors", "torch"):
        raise Unsupported(
            f"{flag} {info.path}: extraction reads Hugging Face models (safetensors or .bin), not {info.format}",
            "convert it with 'ckpt-tool convert MODEL --to hf --out DIR' first",
        )
    if info.training_state:
        raise Refused(f"{flag} {info.path} is a training state (model + optimizer)", "save the model weights alone")
    model_type = ((info.details or {}).get("config") or {}).get("model_type")
    if model_type in CONV1D_MODEL_TYPES:
        raise Unsupported(
            f"{flag} {info.path}: {model_type} stores its projections as Conv1D (in, out), not as Linear weights",
            "extraction handles models built from torch Linear layers (Llama, Mistral, Qwen, ...)",
        )


def _pair(ft: CheckpointInfo, base: CheckpointInfo) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
    """The two tensor tables; refuse tensors present in one model only and shapes that differ."""
    a = {t.name: t for t in ft.tensors}
    b = {t.name: t for t in base.tensors}
    only_ft, only_base = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    shapes = [n for n in a if n in b and tuple(a[n].shape) != tuple(b[n].shape)]
    problems = [f"only in the fine-tune: {', '.join(only_ft[:5])}" + (" …" if len(only_ft) > 5 else "")] if only_ft else []
    if only_base:
        problems.append(f"only in the base: {', '.join(only_base[:5])}" + (" …" if len(only_base) > 5 else ""))
    problems += [f"{n}: {list(a[n].shape)} in the fine-tune, {list(b[n].shape)} in the base" for n in shapes[:10]]
    if problems:
        raise Refused(
            f"{ft.path} and {base.path} are not the same architecture ({len(only_ft) + len(only_base)} tensor(s) in "
            f"one model only, {len(shapes)} shape(s) differ):\n  - " + "\n  - ".join(problems),
            "an adapter can only carry changes of tensors the base has in the same shape (a resized vocabulary, "
            "an added head or tied/untied embeddings cannot be expressed as LoRA); nothing was written",
        )
    return a, b


def _kind(name: str, shape: Sequence[int]) -> str:
    """``linear`` (a LoRA target by default), ``head``, ``embedding`` or ``other`` (norms, biases, buffers)."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return "other"
    leaf = name[: -len(".weight")].rsplit(".", 1)[-1]
    if leaf in EMBEDDINGS:
        return "embedding"
    return "head" if leaf in HEADS else "linear"


def _selected(module: str, globs: Sequence[str]) -> bool:
    """A ``--targets`` glob selects a module by its full name or by a trailing part (``q_proj``, ``mlp.*``)."""
    return any(fnmatch.fnmatchcase(module, g) or fnmatch.fnmatchcase(module, "*." + g) for g in globs)


def _compare(reader: Any, a: TensorInfo, b: TensorInfo) -> tuple[bool, float, float]:
    """(equal, ||W_ft - W_base||_F, ||W_base||_F) of one tensor pair; norms only when they differ."""
    import torch

    x, y = reader.tensor(a), reader.tensor(b)
    if x.dtype == y.dtype and torch.equal(x, y):
        return True, 0.0, 0.0
    if not (x.is_floating_point() and y.is_floating_point()):
        return bool(torch.equal(x.to(torch.float64), y.to(torch.float64))), math.nan, math.nan
    dd = ww = 0.0
    xs, ys = x.reshape(-1), y.reshape(-1)
    for i in range(0, xs.numel(), _CHUNK):  # fp64 in slices: a changed 256k-row embedding is not copied whole
        d = xs[i : i + _CHUNK].to(torch.float64) - ys[i : i + _CHUNK].to(torch.float64)
        dd += float(torch.sum(d * d))
        ww += float(torch.sum(ys[i : i + _CHUNK].to(torch.float64) ** 2))
    if dd == 0.0:
        return True, 0.0, 0.0
    return False, math.sqrt(dd), math.sqrt(ww)


# --- the math ------------------------------------------------------------------------------------------------


def factor(ft: torch.Tensor, base: torch.Tensor, rank: int, what: str = "") -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``(lora_A, lora_B, stats)`` of the delta ``ft - base`` at ``rank``, fp32 factors (module docstring).

    ``stats``: ``energy`` (retained fraction ``Σ_{i<=R} S_i² / Σ S_i²``), ``error`` (measured
    ``||D - B@A||_F / ||D||_F`` with the stored fp32 factors), ``optimum`` (the Eckart-Young bound
    ``sqrt(Σ_{i>R} S_i²) / ||D||_F``), ``norm`` (``||D||_F``).

    Raises:
        Refused: the delta holds NaN or infinity (one of the models is broken).
    """
    import torch

    d = ft.to(torch.float64) - base.to(torch.float64)
    if not bool(torch.isfinite(d).all()):
        raise Refused(
            f"{what or 'a module'}: the delta between the fine-tune and the base is not finite (NaN or inf weights)",
            "one of the models is damaged; nothing was written",
        )
    m, n = d.shape
    tall = m > n
    gram = d.T @ d if tall else d @ d.T  # min(m, n) square
    evals = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)  # the exact spectrum, descending
    top, vecs = _top_eigenvectors(gram, rank)
    total = float(torch.sum(d * d))
    s = top.clamp_min(0).sqrt()
    if tall:  # Dᵀ·D = V S² Vᵀ: A = V_Rᵀ, B = D·V_R = U_R·S_R (no division)
        v = vecs
        a64, b64 = v.T, d @ v
    else:  # D·Dᵀ = U S² Uᵀ: B = U_R·S_R, A = S_R⁻¹·U_Rᵀ·D = Vh_R; components at the noise floor are zero
        u = vecs
        keep = s > ZERO_SV * (float(s[0]) if s.numel() else 0.0)
        inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
        a64 = (u.T @ d) * inv[:, None]
        b64 = u * (s * keep)[None, :]
    a, b = a64.to(torch.float32).contiguous(), b64.to(torch.float32).contiguous()
    err = float(torch.linalg.vector_norm(d - b.to(torch.float64) @ a.to(torch.float64)))
    norm = math.sqrt(total)
    tail = float(evals[rank:].sum()) if evals.numel() > rank else 0.0
    kept = float(evals[:rank].sum())
    stats = {
        "norm": norm,
        "energy": min(1.0, kept / total) if total else 1.0,
        "error": err / norm if norm else 0.0,
        "optimum": math.sqrt(max(tail, 0.0)) / norm if norm else 0.0,
    }
    return a, b, stats


def _top_eigenvectors(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest eigenpairs of a symmetric fp64 matrix (descending), to fp64 accuracy.

    ``torch.linalg.eigh`` with eigenvectors is ~20x slower in fp64 than in fp32 on CPU (7.6 s vs
    0.37 s for 512², measured here), so the fp32 eigenvectors of the top ``rank + 8`` start two fp64
    subspace iterations and a Rayleigh-Ritz step: the fp32 start is accurate to ~1e-7 of the norm, and
    the energy a subspace misses is second order in its error, so the result is the fp64 optimum (the
    tests check it against an independent fp64 SVD, including flat spectra with tiny gaps).
    """
    import torch

    k = min(gram.shape[0], rank + 8)
    _, v32 = torch.linalg.eigh(gram.to(torch.float32))
    q = v32[:, -k:].to(torch.float64)
    for _ in range(2):
        q, _ = torch.linalg.qr(gram @ q)
    w, y = torch.linalg.eigh(q.T @ gram @ q)  # k x k, ascending
    order = torch.arange(k - 1, k - 1 - rank, -1)
    return w[order], q @ y[:, order]


def _step(mod: Module) -> Step:
    out_f, in_f = mod.shape
    outs = (
        Out(HUB, f"{mod.name}.lora_A.weight", FACTOR_DTYPE, (mod.rank, in_f)),
        Out(HUB, f"{mod.name}.lora_B.weight", FACTOR_DTYPE, (out_f, mod.rank)),
    )

    def compute(tensors: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
        a, b, stats = factor(tensors[0], tensors[1], mod.rank, mod.name)
        mod.stats.update(stats)
        return [a, b]

    return Step(outs, (Read(FT, mod.weight), Read(BASE, mod.weight)), compute, f"rank-{mod.rank} SVD of the delta")


# --- the plan ------------------------------------------------------------------------------------------------


def _base_name(base: CheckpointInfo) -> str:
    """``base_model_name_or_path``: the base's recorded name when it is a Hub id, else its directory."""
    cfg = (base.details or {}).get("config") or {}
    name = cfg.get("_name_or_path")
    if isinstance(name, str) and name and not os.path.isabs(name) and name.count("/") == 1 and not Path(name).exists():
        return name
    d = (base.details or {}).get("dir") or (base.path if Path(base.path).is_dir() else os.path.dirname(base.path))
    return os.path.abspath(d)


def plan_extraction(
    ft: CheckpointInfo, base: CheckpointInfo, out: Path, rank: int, targets: Sequence[str] = ()
) -> Extraction:
    """Compare the two models, choose the modules, and build the plan (writes nothing)."""
    from ckpt_tool.io.tensors import TensorReader
    from ckpt_tool.ops.convert import ConvertOptions
    from ckpt_tool.plugins import get_plugin_manager

    _check_input(ft, "FINETUNED")
    _check_input(base, "--base")
    a, b = _pair(ft, base)
    targets = [g for g in (t.strip() for t in targets) if g]
    if targets:
        chosen = {n for n in a if _selected(n[: -len(".weight")] if n.endswith(".weight") else n, targets)}
        for g in targets:
            if not any(n.endswith(".weight") and _selected(n[: -len(".weight")], [g]) for n in a):
                raise Refused(f"--targets {g!r} matches no module of {ft.path}", "list the modules with 'ckpt-tool inspect'")
        bad = sorted(n for n in chosen if _kind(n, a[n].shape) in ("embedding", "other") and n.endswith(".weight"))
        if bad:
            raise Refused(
                f"--targets selects {len(bad)} weight(s) a LoRA of Linears cannot carry (e.g. {bad[0]} "
                f"{list(a[bad[0]].shape)}, {_kind(bad[0], a[bad[0]].shape)})",
                "target Linear layers only (q_proj, mlp.*, lm_head, ...); embeddings and norms are not extracted",
            )
    else:
        chosen = {n for n in a if _kind(n, a[n].shape) == "linear"}
    modules: list[Module] = []
    unchanged: list[str] = []
    left: list[dict[str, Any]] = []
    reader = TensorReader()
    try:
        for name, t in a.items():  # the fine-tune's file order: reads walk both models front to back
            equal, dnorm, wnorm = _compare(reader, t, b[name])
            if name in chosen and name.endswith(".weight") and len(t.shape) == 2:
                if equal:
                    unchanged.append(name[: -len(".weight")])
                    continue
                out_f, in_f = (int(x) for x in t.shape)
                modules.append(Module(name[: -len(".weight")], name, (out_f, in_f), min(rank, out_f, in_f)))
            elif not equal:
                rel = dnorm / wnorm if wnorm else math.nan  # a zero base tensor (a bias) has no relative change
                left.append({"name": name, "shape": list(t.shape), "kind": _kind(name, t.shape),
                             "relative_change": rel if math.isfinite(rel) else None})
    finally:
        reader.close()
    if not modules:
        raise Refused(
            f"{ft.path} and {base.path}: none of the targeted weights differ, so there is nothing to extract"
            + (f" ({len(left)} other tensor(s) differ: {', '.join(x['name'] for x in left[:3])})" if left else ""),
            "check that FINETUNED and --base are not the same model" + (", and --targets" if targets else ""),
        )

    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "target_modules": sorted(m.name for m in modules),
        "base_model_name_or_path": _base_name(base),
        "task_type": _task_type(base),
    }
    view = HubView(
        "adapter",
        [_step(m) for m in modules],
        config,
        extra={"modules": {m.name: {"r": m.rank, "alpha": m.rank} for m in modules},
               "origin": f"a full fine-tune by rank-{rank} truncated SVD of its weight deltas"},
    )
    result = get_plugin_manager().hook.ckpt_from_hub(view=view, layout="peft", options=ConvertOptions(to="peft"))
    if result is None:
        raise Unsupported("no plugin writes a PEFT adapter", "run 'ckpt-tool plugins': the built-in peft plugin is missing")
    steps = compose(view.steps, result.steps, via=HUB)
    plan = TransformPlan({FT: ft, BASE: base}, steps, {OUT: Sink("peft", out, dict(result.options), result.side_files)})
    plan.provenance = {"operation": "split", "split": {
        "mode": "extract-lora", "rank": rank, "targets": list(targets) or None,
        "modules": len(modules), "factor_dtype": FACTOR_DTYPE, "method": "fp64 Gram eigendecomposition, B=U_R*S_R, A=Vh_R",
    }}
    notes, warnings = _messages(modules, unchanged, left, rank, targets)
    return Extraction(plan, modules, unchanged, left, notes, warnings, _written_config(result.side_files))


def _written_config(side_files: Sequence[Any]) -> dict[str, Any]:
    """The ``adapter_config.json`` the peft layout will write (what the summary reports is what is on disk)."""
    import json

    for f in side_files:
        if f.name == "adapter_config.json" and f.data is not None:
            return dict(json.loads(f.data))
    raise Unsupported("the peft layout writes no adapter_config.json (plugin bug)")


def _task_type(base: CheckpointInfo) -> str | None:
    archs = ((base.details or {}).get("config") or {}).get("architectures")
    if isinstance(archs, list) and any(isinstance(x, str) and x.endswith("ForCausalLM") for x in archs):
        return "CAUSAL_LM"
    return None


def _messages(modules: list[Module], unchanged: list[str], left: list[dict[str, Any]], rank: int,
              targets: Sequence[str]) -> tuple[list[str], list[str]]:
    notes: list[str] = []
    warnings: list[str] = []
    clamped = [m for m in modules if m.rank < rank]
    if clamped:
        notes.append(
            f"{len(clamped)} module(s) are smaller than rank {rank} and get their full rank instead, which is exact "
            f"(rank_pattern / alpha_pattern keep the scale 1): "
            + ", ".join(f"{m.name} r={m.rank}" for m in clamped[:5]) + (" …" if len(clamped) > 5 else "")
        )
    if unchanged:
        notes.append(f"{len(unchanged)} targeted module(s) are unchanged by the fine-tune and get no LoRA tensors")
    if left:
        shown = ", ".join(f"{x['name']} ({_WHY[x['kind']]}, {_change(x['relative_change'])})" for x in left[:8])
        warnings.append(
            f"{len(left)} tensor(s) differ between the models but are not in the adapter, so the adapter on the base "
            f"will not reproduce them: {shown}" + (" …" if len(left) > 8 else "")
            + ("; add the head with --targets to extract it too" if any(x["kind"] == "head" for x in left) else "")
        )
    return notes, warnings


#: Why a changed tensor is not in the adapter, by ``_kind``.
_WHY = {
    "other": "not a 2-D weight: a LoRA cannot carry it",
    "embedding": "an embedding: not extracted",
    "head": "the output head: only with --targets",
    "linear": "a Linear not selected by --targets",
}


def _change(rel: float | None) -> str:
    return "changed" if rel is None else f"{rel:.2%} change"


def table_rows(modules: Sequence[Module]) -> list[dict[str, Any]]:
    """Per module: name, shape, rank and (after the run) retained energy, measured and optimal relative error."""
    rows = []
    for m in modules:
        row: dict[str, Any] = {"module": m.name, "shape": list(m.shape), "rank": m.rank}
        for k in ("energy", "error", "optimum"):
            if k in m.stats:
                row[k] = m.stats[k]
        rows.append(row)
    return rows


# --- the operation -------------------------------------------------------------------------------------------


def extract(
    src: Path, base: Path, out: Path, rank: Any, targets: Sequence[str] = (), *,
    force: bool = False, dry_run: bool = False, progress: bool = False,
) -> dict[str, Any]:
    """``split FINETUNED --extract-lora --base BASE --rank R --out DIR``; returns the JSON summary.

    Writes nothing on any error (a refusal found while computing, such as a
    non-finite delta, discards every temp file: the engine publishes last).
    """
    import time

    from ckpt_tool.ops import engine
    from ckpt_tool.ops.inspect import detect
    from ckpt_tool.ops.split import _execute, refuse_outputs_in_inputs

    started = time.perf_counter()
    r = parse_rank(rank)
    ft_info, base_info = detect(Path(src)), detect(Path(base))
    ex = plan_extraction(ft_info, base_info, Path(out), r, targets)
    for info in (ft_info, base_info):
        refuse_outputs_in_inputs(ex.plan, info, {OUT: "--out"})
    target = engine.resolve(ex.plan)
    report = _execute(ex.plan, target, force, dry_run, progress)
    summary: dict[str, Any] = {
        "source": str(src), "source_format": ft_info.format, "kind": ft_info.kind, "mode": "extract-lora",
        "base": str(base), "to": "peft", "rank": r,
        "adapter_config": {k: ex.config.get(k) for k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern",
                                                           "base_model_name_or_path")} | {"use_rslora": False},
        "factor_dtype": "float32",
        "modules": table_rows(ex.modules),
        "unchanged": ex.unchanged,
        "not_represented": ex.not_represented,
        "outputs": [str(p) for p in target.all_paths(ex.plan)],
        "output_dtypes": engine.dtype_summary(ex.plan.outs()),
        "dry_run": dry_run,
        "tensors": engine.tensor_counts(report),
    }
    if ex.notes:
        summary["notes"] = ex.notes
    if ex.warnings:
        summary["warnings"] = ex.warnings
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
