"""Merge a LitGPT LoRA adapter into its base, bit for bit like ``litgpt merge_lora`` (0.5.13).

What LitGPT does (``litgpt/scripts/merge_lora.py`` + ``litgpt/lora.py``), and
therefore what the change functions below repeat with the same torch ops in
the same dtype:

1. every floating tensor of the base is cast to the dtype of the *first* tensor
   of the LoRA checkpoint (``model.to(dtype=lora_dtype)``), LoRA tensors too;
2. plain Linear: ``W += (B @ A) * (alpha / r)``;
3. fused ``attn.qkv``: ``F.conv1d(A[None], B[..., None], groups=n_enabled)``
   (or one conv1d per enabled part under GQA/MQA, then ``cat``), transposed,
   scaled, and zero-padded into the disabled q/k/v rows with ``index_copy_``
   before ``W += delta`` (the padding adds +0.0, which turns -0.0 into +0.0);
4. ``lora_`` keys are dropped, base names kept, the result saved as a bare dict.

``--dtype`` casts the LitGPT result at the end: LitGPT's own ``merge_lora
--precision`` only sets the dtype the model is *instantiated* in (on the meta
device, then replaced by the loaded tensors with ``assign=True``), so the merge
math always runs in the LoRA dtype whatever the precision; there is no LitGPT
flow that merges in another dtype, and ckpt-tool does not invent one. Unlike
LitGPT, the base may be stored as ``{"model": ...}`` and an existing
``final/lit_model.pth`` is looked at instead of being assumed to be the merge.

Values ``ckpt-tool migrate`` had to assume (hyperparameters.yaml written for a
run that had none) stay visible: the merge goes ahead with them, names them in
the summary (``assumed``) and warns on stderr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, NotFound, Refused, UsageError
from ckpt_tool.io.container import read_container
from ckpt_tool.model import DTYPE_NAMES, CheckpointInfo
from ckpt_tool.ops.merge_plan import MergeOptions, MergePlan, lora_scale, scale_problem
from ckpt_tool_lit import keys
from ckpt_tool_lit.config import COPY_CONFIG_FILES, HYPERPARAMETERS, MODEL_CONFIG
from ckpt_tool_lit.geometry import Geometry

if TYPE_CHECKING:
    import torch

WEIGHTS = keys.WEIGHTS_NAME[keys.FULL]
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# Files a complete LitGPT checkpoint dir carries next to the weights (litgpt.utils.copy_config_files + run files).
SIDE_FILES = (*COPY_CONFIG_FILES, "special_tokens_map.json", HYPERPARAMETERS, "prompt_style.yaml")
_CONFIG_KEYS = (
    "n_embd",
    "n_layer",
    "n_head",
    "n_query_groups",
    "head_size",
    "intermediate_size",
    "padded_vocab_size",
)


# --- base lookup -----------------------------------------------------------------------------------


def find_base(adapter: CheckpointInfo) -> Path | None:
    """The base recorded in ``hyperparameters.yaml`` ``checkpoint_dir``, resolved as LitGPT does.

    Relative paths resolve against the current directory; like
    ``litgpt.utils.extend_checkpoint_dir`` we also try ``checkpoints/<that>``.
    Returns None when nothing is recorded or nothing exists there.
    """
    hp = (adapter.details or {}).get("hyperparameters") or {}
    recorded = hp.get("checkpoint_dir")
    if not isinstance(recorded, str) or not recorded:
        return None
    p = Path(recorded).expanduser()
    candidates = [p]
    if not p.is_absolute() and p.parts and p.parts[0] != "checkpoints":
        candidates.append(Path("checkpoints") / p)
    for c in candidates:
        if c.exists():
            return c
    raise NotFound(
        f"the base model recorded by the adapter ({recorded}) does not exist here"
        + (f" (also tried {candidates[1]})" if len(candidates) > 1 else ""),
        "pass the base model directory with --base PATH",
    )


# --- the plan --------------------------------------------------------------------------------------


def _flag(lora: dict[str, Any], name: str) -> bool:
    return bool(lora.get(name))


class _Problems:
    """Collects every mismatch; the same problem in several layers is reported once, naming the layers."""

    def __init__(self) -> None:
        self.items: dict[str, list[int]] = {}

    def add(self, text: str) -> None:
        layer = keys.layer_of(text)
        self.items.setdefault(keys.any_layer(text), []).extend([] if layer is None else [layer])

    def raise_if_any(self, adapter: CheckpointInfo, base: CheckpointInfo) -> None:
        if not self.items:
            return
        lines = [k + (f" ({where})" if (where := keys.layers_text(v)) else "") for k, v in self.items.items()]
        raise Refused(
            f"cannot merge {adapter.path} into {base.path}: {len(lines)} mismatch"
            + ("es" if len(lines) > 1 else "")
            + ":\n  - "
            + "\n  - ".join(lines),
            "check that --base is the model this adapter was trained from (hyperparameters.yaml checkpoint_dir)",
        )


def _refuse_non_lora(adapter: CheckpointInfo) -> None:
    kind = adapter.adapter_type
    if kind == "lora":
        return
    if kind == "adapter":
        raise Refused(
            f"{adapter.path} is a LitGPT adapter (v1, prefix tuning): its learned prompt and gating act on "
            "activations and cannot be folded into plain weights",
            "run it with 'litgpt generate_adapter' / the adapter model instead of merging",
        )
    if kind == "adapter_v2":
        raise Refused(
            f"{adapter.path} is a LitGPT adapter_v2 checkpoint: it also carries the v1 prompt adapter, which "
            "cannot be folded into plain weights, and ckpt-tool does not fold adapter_v2 scales/biases",
            "run it with 'litgpt generate_adapter_v2' instead of merging, or fine-tune with LoRA to get a mergeable adapter",
        )
    raise Refused(
        f"{adapter.path}: a LitGPT {kind or 'full'} checkpoint is not a LoRA adapter; nothing to merge"
    )


def _existing_output(default_out: Path, base: CheckpointInfo, adapter_files: set[str]) -> str | None:
    """Describe what an existing ``final/lit_model.pth`` is (LitGPT just assumes it is the merge)."""
    if not default_out.exists() or os.path.realpath(default_out) in adapter_files:
        return None
    try:
        cont = read_container(default_out)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: say so
        return f"{default_out} already exists and is not a readable checkpoint ({exc})"
    stored = cont.tensors
    if any("lora_" in k for k in stored):
        return f"{default_out} already exists and holds LoRA tensors (an unmerged training state)"
    want = {t.name: tuple(t.shape) for t in base.tensors if "lora_" not in t.name}
    have = {k: tuple(t.shape) for k, t in stored.items()}
    if have == want:
        return (
            f"{default_out} already exists and is a full model with the base's {len(want)} tensors and shapes: "
            "this adapter looks merged already"
        )
    return f"{default_out} already exists and is a different model ({len(have)} tensors, the base has {len(want)})"


def plan_merge(adapter: CheckpointInfo, base: CheckpointInfo, options: MergeOptions) -> MergePlan:
    """Validate ``adapter`` against ``base`` (all mismatches at once) and describe the merge.

    Reads names, shapes, dtypes and configs only; no tensor bytes.
    """
    _refuse_non_lora(adapter)
    details = adapter.details or {}
    lora = dict(adapter.lora or {})
    problems = _Problems()
    adapter_tensors = {t.name: t for t in adapter.tensors}
    if not adapter_tensors:
        raise Refused(
            f"{adapter.path} holds no LoRA tensors", "the adapter file is empty; use a later checkpoint"
        )
    base_tensors = {t.name: t for t in base.tensors}
    modules = keys.lora_modules(adapter_tensors)

    legacy = [m for m in modules if m.endswith(".attn.attn")]
    if legacy:
        raise Refused(
            f"{adapter.path} is a pre-0.5.5 LoRA on the legacy fused attention (attn.attn): its q/k/v deltas were "
            "placed differently by LitGPT era (formats.md §2.4) and the file does not record which, so it cannot be "
            "merged into today's attn.qkv layout by renaming",
            "merge it with the LitGPT release that trained it, then convert the merged model with "
            "'ckpt-tool migrate --upgrade-attn'",
        )
    if any("lora_" in n for n in base_tensors):
        raise Refused(
            f"{base.path} holds LoRA tensors itself (an unmerged training state), not a base model",
            "pass the original base model with --base",
        )

    config = details.get("model_config") or (base.details or {}).get("model_config")
    config_dir = details.get("dir") if details.get("model_config") else (base.details or {}).get("dir")
    has_qkv = any(keys.module_kind(m) == "qkv" for m in modules)
    geometry = None
    if config and has_qkv:  # a malformed config is an InvalidFile here, never a crash in the math
        geometry = Geometry.from_config(config, str(Path(config_dir or ".") / MODEL_CONFIG))
    sizes = geometry.qkv_sizes if geometry else None
    base_config = (base.details or {}).get("model_config")
    adapter_config = details.get("model_config")
    if adapter_config and base_config:
        for key in _CONFIG_KEYS:
            a, b = adapter_config.get(key), base_config.get(key)
            if a is not None and b is not None and a != b:
                problems.add(f"model_config.yaml {key}: adapter {a}, base {b}")

    given, override_warnings = _apply_overrides(lora, options)
    alpha = lora.get("alpha")
    r_cfg = lora.get("r")
    r_seen = {adapter_tensors[f"{m}.lora_B"].shape[-1] for m in modules if f"{m}.lora_B" in adapter_tensors}
    if r_cfg is None:
        if len(r_seen) != 1:
            raise Refused(
                f"{adapter.path}: no hyperparameters.yaml and LoRA ranks differ between modules ({sorted(r_seen)})"
            )
        r_cfg = next(iter(r_seen))
    hp_file = Path(details.get("dir") or Path(adapter.path)) / HYPERPARAMETERS
    raw_alpha = details.get("alpha_recorded")
    if alpha is None and raw_alpha is not None:
        raise InvalidFile(
            f"{hp_file}: lora_alpha = {raw_alpha!r:.40} is not a number (LitGPT itself would fail on it)",
            "set lora_alpha to the value used in training",
        )
    if alpha is None:
        raise Refused(
            f"{adapter.path}: lora_alpha is unknown ("
            + ("hyperparameters.yaml does not record it" if hp_file.is_file() else "no hyperparameters.yaml next to the adapter")
            + "); the scale alpha/r cannot be read from the tensors",
            "restore hyperparameters.yaml from the training run, or pass the value used in training with "
            "--lora-alpha (old LitGPT defaults were r=8, alpha=16)",
        )
    if not isinstance(r_cfg, int) or r_cfg <= 0:
        raise Refused(f"{adapter.path}: invalid lora_r {r_cfg!r} in hyperparameters.yaml")
    r = r_cfg
    if "alpha" in given:
        problem = scale_problem(alpha, r)
        if problem:
            raise UsageError(f"--lora-alpha {alpha}: {problem} (r={r} from the adapter)", "pass the lora_alpha used in training")
    scaling = lora_scale(alpha, r, where=str(hp_file))  # LitGPT: lora_alpha / r
    if has_qkv and any(lora.get(f) is None for f in keys.QKV_PARTS):
        raise Refused(
            f"{adapter.path}: cannot tell which of query/key/value the attn.qkv LoRA covers (no "
            "hyperparameters.yaml records lora_query/lora_key/lora_value and the shapes fit several choices)",
            "restore hyperparameters.yaml from the training run, or name the targets with --lora-targets "
            "(e.g. query,value: the old lit-gpt default)",
        )
    enable = (_flag(lora, "query"), _flag(lora, "key"), _flag(lora, "value"))
    flags = {f: _flag(lora, f) for f in keys.MODULE_FLAGS}

    lora_dtype = adapter.tensors[0].dtype  # LitGPT: next(iter(lora_checkpoint.values())).dtype
    for t in adapter.tensors:
        if t.dtype not in FLOAT_DTYPES:
            problems.add(f"{t.name}: dtype {t.dtype} is not a floating-point dtype LitGPT can merge")
        if "lora_" not in t.name:
            problems.add(f"{t.name}: not a LoRA tensor (the adapter file should hold only lora_ keys)")
        if len(t.shape) != 2 or 0 in t.shape:
            problems.add(f"{t.name}: shape {list(t.shape)} is not a 2-D LoRA matrix")

    changes: dict[str, Any] = {}
    merged: list[str] = []
    for m in modules:
        a_name, b_name, w_name = f"{m}.lora_A", f"{m}.lora_B", f"{m}.weight"
        a, b = adapter_tensors.get(a_name), adapter_tensors.get(b_name)
        if a is None or b is None:
            problems.add(f"{m}: has {'lora_A' if a else 'lora_B'} but not {'lora_B' if a else 'lora_A'}")
            continue
        w = base_tensors.get(w_name)
        if w is None:
            problems.add(f"{m}: the base has no {w_name}")
            continue
        if len(a.shape) != 2 or len(b.shape) != 2 or len(w.shape) != 2:
            continue
        kind = keys.module_kind(m)
        if kind == "qkv":
            n_enabled = sum(enable)
            if not n_enabled:
                problems.add(
                    f"{m}: LoRA tensors present but lora_query/lora_key/lora_value are all false in hyperparameters.yaml"
                )
                continue
            if sizes is None or geometry is None:
                problems.add(f"{m}: the q/k/v sizes are unknown (no model_config.yaml with n_head/n_embd)")
                continue
            q, k, v = sizes
            if w.shape[0] != q + k + v:
                problems.add(f"{w_name}: {w.shape[0]} rows, model_config.yaml gives q+k+v = {q + k + v}")
            if a.shape[0] != r * n_enabled:
                problems.add(f"{a_name}: {a.shape[0]} rows, expected r·{n_enabled} = {r * n_enabled} (r={r})")
            parts = [s for s, e in zip((q, k, v), enable) if e]
            if b.shape[0] != sum(parts):
                problems.add(
                    f"{b_name}: {b.shape[0]} rows, the enabled parts "
                    f"({'+'.join(p for p, e in zip('qkv', enable) if e)}) need {sum(parts)}"
                )
        else:
            if kind in flags and not flags[kind]:
                problems.add(f"{m}: LoRA tensors present but lora_{kind} is false in hyperparameters.yaml")
            if a.shape[0] != r:
                problems.add(f"{a_name}: {a.shape[0]} rows, expected r={r}")
            if b.shape[0] != w.shape[0]:
                problems.add(f"{b_name}: {b.shape[0]} rows, base {w_name} has {w.shape[0]} output features")
        if b.shape[1] != r:
            problems.add(f"{b_name}: {b.shape[1]} columns, expected r={r}")
        if a.shape[1] != w.shape[1]:
            problems.add(f"{a_name}: {a.shape[1]} columns, base {w_name} has {w.shape[1]} input features")
        if w.dtype not in FLOAT_DTYPES:
            problems.add(f"{w_name}: dtype {w.dtype} cannot take a LoRA delta")
        if kind == "qkv" and geometry is not None:
            changes[w_name] = _qkv_change(a_name, b_name, lora_dtype, scaling, enable, geometry)
        else:
            changes[w_name] = _linear_change(a_name, b_name, lora_dtype, scaling)
        merged.append(m)

    # Modules the hyperparameters say were trained but that carry no LoRA tensors (LitGPT refuses these too).
    have = set(modules)
    for w_name, w in base_tensors.items():
        if not w_name.endswith(".weight") or len(w.shape) != 2:
            continue
        m = w_name[: -len(".weight")]
        kind = keys.module_kind(m)
        expected = any(enable) if kind == "qkv" else flags.get(kind, False)
        if kind == "mlp" and not keys.is_lora_mlp(m):
            continue
        if expected and m not in have:
            problems.add(
                f"{m}: hyperparameters.yaml enables lora_{kind if kind != 'qkv' else 'query/key/value'} but the adapter has no {m}.lora_A/B"
            )
    problems.raise_if_any(adapter, base)

    # Output dtypes: LitGPT casts every floating tensor to the LoRA dtype; --dtype casts that result.
    want = options.out_dtype
    out_dtype = {}
    for t in base.tensors:
        if t.dtype in FLOAT_DTYPES:
            out_dtype[t.name] = want or lora_dtype
        else:
            out_dtype[t.name] = t.dtype

    adapter_dir = Path(details.get("dir") or Path(adapter.path))
    if adapter_dir.is_file():
        adapter_dir = adapter_dir.parent
    base_dir = Path(base.path) if Path(base.path).is_dir() else Path(base.path).parent
    default_out = adapter_dir / WEIGHTS
    extra = options.extra or {}
    out = extra.get("out")
    if out is not None and os.path.realpath(out) == os.path.realpath(adapter_dir):
        out = None  # --out FINAL/ is LitGPT's own convention (the merge beside the adapter): same checks
    if out is not None:
        theirs = [n for n in keys.ADAPTER_NAMES if (Path(out) / n).is_file()]
        if theirs:
            raise Refused(
                f"--out {out} holds another LitGPT adapter ({theirs[0]}): a {WEIGHTS} written beside it makes "
                "LitGPT treat that adapter as merged already (merge_lora skips it, generate loads this model)",
                "write the merged model to a new directory with --out",
            )
    if out is None and not extra.get("force"):
        adapter_files = {os.path.realpath(f) for f in adapter.files}
        adapter_files |= {os.path.realpath(t.file) for t in adapter.tensors}
        what = _existing_output(default_out, base, adapter_files)
        if what:
            raise Refused(
                what, "pass --force to merge again and replace it, or --out DIR to write a new checkpoint"
            )

    copy_files = []
    for name in SIDE_FILES:
        for d in (adapter_dir, base_dir):
            if (d / name).is_file():
                copy_files.append(d / name)
                break

    summary = {
        "lora": {
            "r": r,
            "alpha": alpha,
            "scales": [scaling],
            "modules": len(merged),
            "tensors": len(adapter_tensors),
            "query": enable[0],
            "key": enable[1],
            "value": enable[2],
            **flags,
        },
        "compute_dtype": DTYPE_NAMES.get(lora_dtype, lora_dtype),
        "base_wrapper": base.wrapper,
    }
    warnings = list(override_warnings)
    assumed = [a for a in lora.get("assumed") or [] if a not in given]
    summary["hyperparameters"] = {
        "source": lora.get("source") or "tensors",
        **({"given": given} if given else {}),
        **({"assumed": assumed} if assumed else {}),
    }
    if assumed:
        summary["assumed"] = assumed
        warnings.append(
            f"{hp_file} records ASSUMED values ({', '.join(_assumed_text(a, lora) for a in assumed)}), written by "
            "'ckpt-tool migrate' for a run that had no hyperparameters.yaml: the merge uses them, but if they are not "
            "what the run trained with the merged weights are wrong - check them against the training script and "
            "remove the 'ckpt-tool-assumed' line once confirmed"
        )
    identity = [Path(f) for f in adapter.files]
    if hp_file.is_file():
        identity.append(hp_file)
    return MergePlan(
        base=base,
        adapter=adapter,
        changes=changes,
        out_dtype=out_dtype,
        adapter_tensors=adapter_tensors,
        layout="lit",
        copy_files=copy_files,
        summary=summary,
        default_out=default_out,
        wrapper=None,
        warnings=warnings,
        protected_dirs=[adapter_dir],
        identity=identity,
    )


def _apply_overrides(lora: dict[str, Any], options: MergeOptions) -> tuple[list[str], list[str]]:
    """``--lora-alpha`` / ``--lora-targets`` replace what hyperparameters.yaml records (or lacks) in
    ``lora``; returns the names given and warnings for recorded values they change."""
    given: list[str] = []
    warnings: list[str] = []
    assumed = set(lora.get("assumed") or [])
    recorded = lora.get("source") not in (None, "tensors")
    if options.lora_targets is not None:
        unknown = [t for t in options.lora_targets if t not in keys.LORA_FLAGS]
        if unknown:
            raise UsageError(
                f"--lora-targets: {', '.join(map(repr, unknown))} is not a LitGPT LoRA target",
                f"use a comma-separated list of {', '.join(keys.LORA_FLAGS)}",
            )
        changed = []
        for flag in keys.LORA_FLAGS:
            value = flag in options.lora_targets
            if recorded and isinstance(lora.get(flag), bool) and lora[flag] != value and flag not in assumed:
                changed.append(f"lora_{flag}={str(lora[flag]).lower()}")
            lora[flag] = value
            given.append(flag)
        if changed:
            warnings.append(
                f"--lora-targets {','.join(options.lora_targets)} replaces what {lora.get('source')} records "
                f"({', '.join(changed)}): the merge uses the command line"
            )
    if options.lora_alpha is not None:
        rec = lora.get("alpha")
        if recorded and rec is not None and rec != options.lora_alpha and "alpha" not in assumed:
            warnings.append(
                f"--lora-alpha {options.lora_alpha} replaces lora_alpha={rec} recorded in {lora.get('source')}: "
                "the merge uses the command line"
            )
        lora["alpha"] = options.lora_alpha
        given.insert(0, "alpha")
    return given, warnings


def _assumed_text(name: str, lora: dict[str, Any]) -> str:
    value = lora.get(name)
    return f"lora_{name}={value}" if value is not None and not isinstance(value, bool) else (
        f"lora_{name}={str(value).lower()}" if isinstance(value, bool) else f"lora_{name}"
    )


# --- the math (LitGPT's, op for op) ----------------------------------------------------------------


#: The base weight is added in row blocks of at most this many elements, so merging a 32000 x 4096
#: lm_head holds the delta plus one block, not a second full-size copy of the weight.
ADD_BLOCK_ELEMS = 1 << 22


def _linear_change(a_name: str, b_name: str, lora_dtype: str, scaling: float) -> Any:
    """``LoRALinear.merge``: ``weight.data += (lora_B @ lora_A) * scaling`` in the LoRA dtype.

    ``B @ A`` is one matmul over the whole matrix, exactly as LitGPT calls it
    (splitting it changes the bits: GEMM edge kernels round differently).
    The delta buffer then receives ``weight + delta`` block by block with the
    operands in LitGPT's order (``torch.add(weight, delta, out=delta)``), so
    the only full-size allocation is the delta itself.
    """

    def change(w: torch.Tensor, load: Any) -> torch.Tensor:
        import torch

        from ckpt_tool.io.tensors import torch_dtype

        dt = torch_dtype(lora_dtype)
        lora_a, lora_b = load(a_name).to(dt), load(b_name).to(dt)
        delta = lora_b @ lora_a
        delta.mul_(scaling)  # the same kernel as LitGPT's ``(B @ A) * scaling``, in place
        step = max(1, ADD_BLOCK_ELEMS // max(1, w.shape[1]))
        for i in range(0, w.shape[0], step):
            block = delta[i : i + step]
            torch.add(w[i : i + step].to(dt), block, out=block)  # model.to(lora_dtype), then weight += delta
        return delta

    return change


def _qkv_change(
    a_name: str,
    b_name: str,
    lora_dtype: str,
    scaling: float,
    enable: tuple[bool, bool, bool],
    geometry: Geometry,
) -> Any:
    """``LoRAQKVLinear.get_lora_AB`` + ``merge``: conv1d per group, zero_pad via index_copy_, add."""
    q, k, v = geometry.qkv_sizes
    n_head, n_groups = geometry.n_head, geometry.n_query_groups
    qkv_shapes = [s for s, e in zip((q, k, v), enable) if e]
    n_enabled = sum(enable)

    def change(w: torch.Tensor, load: Any) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        from ckpt_tool.io.tensors import torch_dtype

        dt = torch_dtype(lora_dtype)
        weight = w.to(dt, copy=True)
        lora_a, lora_b = load(a_name).to(dt), load(b_name).to(dt)
        inp, wt = lora_a.unsqueeze(0), lora_b.unsqueeze(-1)
        if n_head == n_groups:
            lora = F.conv1d(inp, wt, groups=n_enabled)
        else:
            lora = torch.cat(
                [F.conv1d(x, y) for x, y in zip(inp.chunk(n_enabled, dim=1), wt.split(qkv_shapes))], dim=1
            )
        lora = lora.squeeze(0)
        x = lora.T * scaling
        if not all(enable):
            ind: list[int] = []
            if enable[0]:
                ind.extend(range(q))
            if enable[1]:
                ind.extend(range(q, q + k))
            if enable[2]:
                ind.extend(range(q + k, weight.shape[0]))
            result = x.new_zeros(*x.shape[:-1], weight.shape[0])
            x = result.index_copy_(dim=-1, index=torch.tensor(ind), source=x)
        weight += x.T
        return weight

    return change
