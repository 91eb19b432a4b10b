"""Plan a PEFT LoRA merge that is bit-identical to ``PeftModel.from_pretrained(...).merge_and_unload()``.

Why the math looks the way it does (PEFT 0.21.2, ``peft/tuners/lora/layer.py``, ``variants.py``, ``dora.py``):

* ``PeftModel.from_pretrained`` creates the LoRA parameters in the base layer's dtype, then
  ``autocast_adapter_dtype=True`` upcasts fp16/bf16/fp8 ones to fp32, then ``load_state_dict`` *copies*
  the saved tensors into them. So whatever dtype the adapter was saved in, the merge sees
  ``saved.to(fp32)`` (``fp64`` only for an fp64 base).
* Full tensors saved with the adapter (``modules_to_save``, ``….base_layer.weight`` for targeted
  embeddings, trained biases) are copied into base-dtype parameters *before* merging:
  ``saved.to(base dtype)`` replaces the base tensor, and a LoRA delta is then added on top.
* Linear / Conv1D: ``W.data += transpose(B @ A, fan_in_fan_out) * scaling`` - an in-place add of an
  fp32 delta into the base-dtype weight (one rounding). Embedding: ``W.data += ΔW.to(W.dtype)``
  (two roundings). ``lora_B.bias``: ``bias.data += lora_bias * scaling``.
* DoRA: ``(m / ‖W + ΔW‖_row) * (W + ΔW)`` in fp32 against the unmerged W, then ``.to(W.dtype)``.
* The base dtype is the dtype the base is *loaded* in, which is not always the stored one: PEFT's
  documented flow is ``AutoModelForCausalLM.from_pretrained(base)``, whose default ``dtype="auto"``
  (transformers 5) follows config.json's ``dtype`` (or legacy ``torch_dtype``), else the first floating
  tensor's dtype; ``--dtype X`` is ``from_pretrained(base, dtype=X)``. Every floating base tensor is
  cast to that dtype *before* the math above, exactly as loading does.
* ``fan_in_fan_out`` follows the module type, not the config: for ``nn.Linear`` PEFT forces it to
  False (with a warning), for transformers' ``Conv1D`` to True (``dispatch_default``).

The change functions below repeat those torch ops in the same order and on tensors of the same
shape, dtype and memory layout, which is what makes the output bit-identical. Everything that is
not "base + delta" (PiSSA/OLoRA/CorDA/LoftQ/LoRA-GA inits rewrite the base, layer replication,
other LoRA variants, other tuners) is refused before anything is written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, NotFound, Refused, Unsupported, UsageError
from ckpt_tool.io.container import read_container
from ckpt_tool.io.tensors import Scratch, torch_dtype
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.merge_plan import Change, MergeOptions, MergePlan, scale_problem
from ckpt_tool_peft.detect import CONFIG_NAME, DEFAULT_NAME, KEY_PREFIX, pattern_value

if TYPE_CHECKING:
    import torch

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
# transformers' ``Conv1D`` modules (weight stored as (in, out)), by model_type: the leaf names that are
# Conv1D there (transformers 5.3: gpt2, openai, imagegpt, decision_transformer, clvp modeling files).
# Every other module PEFT can adapt with a 2-D weight is an ``nn.Linear``. PEFT forces
# fan_in_fan_out=True for Conv1D and False for nn.Linear whatever adapter_config.json says; the shapes
# tell the two apart except for square weights, where only the module type can.
CONV1D_LEAVES = frozenset({"c_attn", "q_attn", "c_proj", "c_fc"})
CONV1D_MODEL_TYPES: dict[str, frozenset[str]] = {
    "gpt2": CONV1D_LEAVES,
    "openai-gpt": CONV1D_LEAVES,
    "imagegpt": CONV1D_LEAVES,
    "decision_transformer": CONV1D_LEAVES,
    "clvp": frozenset({"c_fc", "c_proj"}),
    "clvp_decoder": frozenset({"c_fc", "c_proj"}),
}
# transformers model types whose c_attn / c_proj / c_fc are nn.Linear.
LINEAR_C_MODEL_TYPES = frozenset({"gpt_bigcode", "gpt_neo", "starcoder2"})
# transformers 5.3 AutoModelForCausalLM classes that keep some tensors in fp32 whatever dtype they are loaded in:
# ``_keep_in_fp32_modules`` (applies when loading in fp16) and ``_keep_in_fp32_modules_strict`` (fp16 and bf16).
# transformers matches each entry as a regex *search* of the parameter name, ``*`` meaning ``.*``
# (``core_model_loading.build_glob_alternation``). Pinned against the installed classes by a test.
KEEP_FP32: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "afmoe": (("expert_bias", "input_layernorm", "k_norm", "norm", "post_attention_layernorm", "post_mlp_layernorm",
               "pre_mlp_layernorm", "q_norm"), ()),
    "deepseek_v3": ((), ("e_score_correction_bias",)),
    "dots1": ((), ("e_score_correction_bias",)),
    "ernie4_5_moe": ((), ("gate.weight", "moe_statics")),
    "exaone_moe": ((), ("e_score_correction_bias",)),
    "glm4_moe": ((), ("e_score_correction_bias",)),
    "glm4_moe_lite": ((), ("e_score_correction_bias",)),
    "glm_moe_dsa": (("indexer.weights_proj",), ("e_score_correction_bias",)),
    "gpt_oss": (("input_layernorm", "norm", "post_attention_layernorm"), ()),
    "longcat_flash": (("classifier.weight",), ()),
    "nemotron_h": ((), ("e_score_correction_bias",)),
    "rwkv": (("time_decay", "time_first"), ()),
    "solar_open": ((), ("e_score_correction_bias",)),
}
# config.json ``dtype`` / ``torch_dtype`` values (``getattr(torch, value)`` in transformers) -> safetensors name.
CONFIG_DTYPES = {
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "double": "F64",
}
# init_lora_weights values that leave the base weights alone (so base + delta is the merged model).
SAFE_INITS = {True, False, "gaussian", "eva", "orthogonal"}
# LoRA variants (LoraConfig fields tagged ``is_lora_variant``) other than DoRA, and other options that
# change what a merge means. Each has its own merge code in PEFT that is not repeated here.
OTHER_VARIANTS = (
    "velora_config",
    "alora_invocation_tokens",
    "monteclora_config",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "trainable_token_indices",
    "target_parameters",
    "use_qalora",
    "megatron_config",
)
LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
_LORA_KEY = re.compile(
    r"^(?P<mod>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)$"
)
_TUNER_MARKERS = re.compile(
    r"\.(lora_\w+|hada_\w+|lokr_\w+|ia3_\w+|vera_\w+|oft_\w+|boft_\w+|prompt_embeddings)(\.|$)"
)


# --------------------------------------------------------------------------------------------- base


def _recorded(adapter: CheckpointInfo) -> tuple[str | None, str | None]:
    """``base_model_name_or_path`` and ``revision`` of adapter_config.json (None when absent or not text)."""
    config = (adapter.details or {}).get("config") or {}
    name = config.get("base_model_name_or_path")
    revision = config.get("revision")
    name = name.strip() if isinstance(name, str) and name.strip() else None
    return name, revision if isinstance(revision, str) and revision else None


def _local_base(adapter: CheckpointInfo, name: str) -> Path | None:
    candidates = [Path(name).expanduser()]
    adapter_dir = _adapter_root(adapter)
    if not candidates[0].is_absolute() and adapter_dir is not None:
        candidates.append(adapter_dir / name)
    for cand in candidates:
        if cand.is_dir() and (cand / "config.json").is_file():
            return cand
    return None


def locate_recorded_base(adapter: CheckpointInfo) -> dict[str, Any] | None:
    """Where the base named in adapter_config.json is here, the way ``from_pretrained`` would find it
    offline: a local directory (relative to the working directory, then to the adapter), else the
    snapshot of that Hub id in the local Hugging Face cache (``ckpt_tool.io.hfcache``; never downloads).

    Returns ``{"id", "revision"?, "resolved": path | None, "how", "commit"?, "cache"?}``, or None when
    nothing is recorded.
    """
    from ckpt_tool.io import hfcache

    name, revision = _recorded(adapter)
    if name is None:
        return None
    out: dict[str, Any] = {"id": name, "resolved": None, "how": None}
    if revision:
        out["revision"] = revision
    local = _local_base(adapter, name)
    if local is not None:
        out.update(resolved=str(local), how="local path")
        return out
    if hfcache.is_repo_id(name):
        out["cache"] = str(hfcache.cache_dir())
        if revision and not hfcache.valid_revision(revision):
            out["how"] = "invalid revision"
            return out
        snap = hfcache.resolve(name, revision)
        if snap is not None:
            out.update(resolved=str(snap.path), how="Hugging Face cache", commit=snap.commit)
    return out


def find_base(adapter: CheckpointInfo) -> Path | None:
    """The base model named in ``adapter_config.json``: a local model dir, or its Hub id's snapshot in
    the local Hugging Face cache.

    PEFT passes ``base_model_name_or_path`` to ``from_pretrained``, which treats it as a local path
    first (relative to the working directory), then as a Hub id. A Hub id is never downloaded: merge
    is offline, and when the model is not cached the error names the recorded id and ``--base``.
    """
    found = locate_recorded_base(adapter)
    if found is None:
        return None
    if found["resolved"]:
        return Path(found["resolved"])
    name = found["id"]
    at = f" at revision {found['revision']!r}" if found.get("revision") else ""
    if found.get("how") == "invalid revision":
        raise NotFound(
            f"the adapter's base model {name!r} is recorded with revision {found['revision']!r:.80}, which is not a "
            "branch, tag or commit name (adapter_config.json revision)",
            "pass the base model directory with --base PATH",
        )
    if "cache" in found:
        raise NotFound(
            f"the adapter's base model {name!r}{at} (adapter_config.json base_model_name_or_path) is not a local "
            f"directory and is not in the local Hugging Face cache ({found['cache']}; HF_HUB_CACHE / HF_HOME "
            "choose it); ckpt-tool never downloads",
            f"download it first (e.g. 'hf download {name}'), or pass the base model directory with --base PATH",
        )
    raise NotFound(
        f"the adapter's base model {name!r:.300} (adapter_config.json base_model_name_or_path) does not exist here",
        "pass the base model directory with --base PATH",
    )


def _weights_identity(directory: Path, files: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, fingerprint) of a model directory's weights files, sorted: two copies of one model agree."""
    from ckpt_tool.io.fingerprint import file_fingerprint

    if files is None:
        try:
            files = sorted(
                str(p) for p in directory.iterdir() if p.is_file() and p.name.endswith((".safetensors", ".bin"))
            )
        except OSError:
            return []
    out = []
    for f in sorted(files, key=os.path.basename):
        try:
            out.append((os.path.basename(f), file_fingerprint(f)))
        except OSError:
            return []
    return out


def compare_with_recorded(
    adapter: CheckpointInfo, base: CheckpointInfo, base_config: dict[str, Any]
) -> tuple[dict[str, Any] | None, list[str]]:
    """``--base`` against the base adapter_config.json records: (facts for the summary, warnings).

    When the recorded base resolves here, a ``--base`` elsewhere is compared by its weights files
    (names + sampled fingerprints: a copy of the same model agrees) and by config.json
    (``architectures`` / ``model_type``). When it does not, a config.json ``_name_or_path`` (written
    by transformers < 5) that names another model is reported.
    """
    found = locate_recorded_base(adapter)
    if found is None:
        return None, []
    found = {**found, "base_given": True}
    name = found["id"]
    bdir = _base_dir(base)
    resolved = found.get("resolved")
    if resolved:
        if _same_dir(Path(resolved), bdir):
            found["matches"] = True
            return found, []
        mine = _weights_identity(bdir, list(base.files))
        theirs = _weights_identity(Path(resolved))
        if not mine or not theirs:
            found["matches"] = None  # e.g. only the recorded model's config.json is cached: nothing to compare
            return found, []
        if mine == theirs:
            found["matches"] = True  # a copy of the recorded base
            return found, []
        found["matches"] = False
        other: dict[str, Any] = {}
        try:
            from ckpt_tool_safetensors.detect import read_config

            other = read_config(Path(resolved)) or {}
        except Exception:  # noqa: BLE001 - the recorded base is only used for this comparison
            other = {}
        keys = ("architectures", "model_type")
        differ = [k for k in keys if other.get(k) != base_config.get(k)]
        if differ:
            what = "; ".join(f"{k} {base_config.get(k)!r:.80} vs {other.get(k)!r:.80}" for k in differ)
            cfg = f"their config.json differ too ({what})"
        else:
            cfg = (
                "their config.json agree on the architecture, so --base may be another fine-tune or revision of "
                "the same model"
            )
        return found, [
            f"--base {base.path} is not the base model this adapter records: adapter_config.json names {name!r:.200}, "
            f"which is here at {resolved} ({found['how']}), and the two hold different weights; {cfg}. The merge "
            "adds the adapter's delta to the weights given with --base - if they are not the ones it was trained "
            "on, the merged model is wrong"
        ]
    found["matches"] = None
    claimed = base_config.get("_name_or_path")
    if (
        isinstance(claimed, str)
        and claimed.strip()
        and claimed.strip() != name
        and not Path(claimed).expanduser().is_absolute()
        and not claimed.startswith(".")
    ):
        found["matches"] = False
        return found, [
            f"--base {base.path} is not the base model this adapter records: adapter_config.json names {name!r:.200}, "
            f"but the base's config.json says it was saved from {claimed!r:.200} (_name_or_path); if that is not the "
            "model the adapter was trained on, the merged model is wrong"
        ]
    return found, []


# ------------------------------------------------------------------------------------------ adapter


@dataclass
class _Adapter:
    """The selected adapter of a PEFT dir: its config and its tensors by saved key."""

    name: str
    dir: Path
    config: dict[str, Any]
    weights: Path
    tensors: dict[str, TensorInfo]


def _adapter_root(adapter: CheckpointInfo) -> Path | None:
    d = (adapter.details or {}).get("dir")
    if d:
        return Path(d)
    p = Path(adapter.path)
    if p.is_dir():
        return p
    return p.parent if p.parent.is_dir() else None


def _load_adapter(adapter: CheckpointInfo, options: MergeOptions) -> _Adapter:
    """The adapter ``options.adapter_name`` names (default: the one detected, usually ``default``).

    Detection already found every adapter of the save and checked its ``adapter_config.json``
    (``parse_config``: types, patterns, size), so the merge plans from exactly what inspect reports.
    """
    details = adapter.details or {}
    found: dict[str, dict[str, Any]] = details.get("adapters") or {}
    name = options.adapter_name or details.get("adapter_name") or DEFAULT_NAME
    chosen = found.get(name)
    if chosen is None:
        raise NotFound(
            f"{adapter.path}: no adapter named {name!r}",
            f"choose one of: {', '.join(sorted(found))}" if found else "check --adapter",
        )
    weights = Path(chosen["weights"])
    return _Adapter(name, Path(chosen["dir"]), dict(chosen["config"]), weights, read_container(weights).tensors)


# ------------------------------------------------------------------------------------------ config


_VARIANT_WHY = {
    "target_parameters": (
        "LoRA on nn.Parameter (e.g. MoE expert weights, merged through PEFT's ParamWrapper with a "
        "per-expert rank of r x num_experts) is not implemented by ckpt-tool"
    ),
}


def unsupported_reasons(cfg: dict[str, Any]) -> list[str]:
    """Why this tuner / LoRA variant has a merge rule ckpt-tool does not implement (exit 5, Unsupported).

    Empty when the adapter is plain LoRA / rsLoRA / DoRA, whose merge this module repeats exactly.
    """
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        what = {
            "IA3": "IA3 scales base weights by learned vectors; its merge is not implemented here",
            "ADALORA": (
                "AdaLoRA's update is in SVD form (lora_A, lora_E singular values, lora_B, pruned per module "
                "by the learned rank masks) with its own merge rule, not implemented here"
            ),
        }.get(peft_type, "only LoRA adapters can be merged by ckpt-tool")
        return [f"peft_type is {cfg.get('peft_type')!r}: {what}"]
    out = []
    init = cfg.get("init_lora_weights", True)
    if init not in SAFE_INITS and not _rewrites_base(init):
        out.append(f"init_lora_weights={init!r} is a LoRA variant ckpt-tool cannot merge exactly")
    if cfg.get("layer_replication"):
        out.append(
            "layer_replication is set: the adapted model has duplicated layers that share base weights, "
            "which PEFT itself refuses to merge"
        )
    for key in OTHER_VARIANTS:
        if cfg.get(key):
            why = _VARIANT_WHY.get(key, "that LoRA variant has its own merge rule, not implemented by ckpt-tool")
            out.append(f"{key} is set: {why}")
    if cfg.get("ensure_weight_tying") or cfg.get("target_modules_to_tie"):
        out.append("ensure_weight_tying / target_modules_to_tie (adapters tied across layers) is not supported")
    return out


def _rewrites_base(init: Any) -> bool:
    return isinstance(init, str) and re.match(r"(pissa|olora|corda|loftq|lora_ga)", init.lower()) is not None


def _check_config(cfg: dict[str, Any], problems: list[str]) -> None:
    """Refuse everything whose merge is not "base + LoRA delta" the way this module computes it.

    Tuners and variants with another merge rule raise ``Unsupported`` at once; inputs that cannot
    give the fine-tuned model (a base rewritten at init) are collected in ``problems`` (``Refused``).
    """
    reasons = unsupported_reasons(cfg)
    if reasons:
        raise Unsupported(
            "cannot merge this adapter: " + "; ".join(reasons), "use PEFT's merge_and_unload() for this adapter"
        )
    init = cfg.get("init_lora_weights", True)
    if _rewrites_base(init):
        problems.append(
            f"init_lora_weights={init!r} rewrote the base weights when the adapter was created, so the "
            "original base + this delta is not the fine-tuned model (merge with the modified base PEFT saved, "
            "or convert the adapter with save_pretrained(path_initial_model_for_weight_conversion=...) "
            "and merge the converted adapter)"
        )
    for key in ("r", "lora_alpha"):
        v = cfg.get(key, 8)
        if _is_number(v) and not math.isfinite(v):
            continue  # reported by _check_scales
        if not _is_number(v) or v <= 0:
            problems.append(f"{key}={v!r} in adapter_config.json is not a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        v = cfg.get(key) or {}
        if not isinstance(v, dict):
            problems.append(f"{key} in adapter_config.json is not a mapping")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_scale_problems(cfg: dict[str, Any]) -> list[str]:
    """Non-finite or absurd r / lora_alpha / rank_pattern / alpha_pattern values, each named.

    JSON as Python reads it accepts ``NaN``, ``Infinity`` and ``1e999`` (= inf); PEFT would merge them
    into NaN / inf weights without a word. (Per-module scales are checked by ``_check_scales``.)
    """
    rslora = bool(cfg.get("use_rslora"))
    r0, a0 = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    out = []
    p = scale_problem(a0, r0, rslora)
    if p:
        out.append(p)
    alphas, ranks = cfg.get("alpha_pattern"), cfg.get("rank_pattern")
    for key, value in alphas.items() if isinstance(alphas, dict) else ():
        p = scale_problem(value, 1)  # the value itself; its scale with the module's r is checked per module
        if p:
            out.append(f"alpha_pattern[{key!r:.60}]: {p}")
    for key, value in ranks.items() if isinstance(ranks, dict) else ():
        p = scale_problem(1, value)
        if p:
            out.append(f"rank_pattern[{key!r:.60}]: {p}")
    return out


def _check_scales(ad_dir: Path, cfg: dict[str, Any], modules: dict[str, _Module] | None = None) -> None:
    """Raise ``InvalidFile`` (exit 4) for every scale that is not finite and sane, before anything is written."""
    found = config_scale_problems(cfg)
    for m in (modules or {}).values():
        p = scale_problem(m.alpha, m.r, bool(cfg.get("use_rslora")))
        if p:
            found.append(f"{m.name}: {p}")
    if found:
        shown = "; ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise InvalidFile(
            f"{ad_dir / 'adapter_config.json'}: unusable LoRA scale(s): {shown}: merging would silently turn the "
            "adapted weights into NaN, inf or garbage",
            "set r / lora_alpha (and the patterns) to the values used in training",
        )


def _scaling(cfg: dict[str, Any], module: str) -> tuple[int, float, float]:
    """(r, alpha, scaling) of one module, as ``LoraModel._create_and_replace`` + ``update_layer`` compute them.

    The scaling is NaN for values ``scale_problem`` rejects; ``_check_scales`` refuses those before use.
    """
    r = pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8))
    alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
    if scale_problem(alpha, r, bool(cfg.get("use_rslora"))) is not None:
        return r, alpha, math.nan
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, alpha, scaling


# ------------------------------------------------------------------------------------------- ops


def _transpose(w: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return w.T if fan_in_fan_out else w


@dataclass
class _Module:
    """One adapted module: where its tensors are and how PEFT would merge them."""

    name: str  # module path without ``base_model.model.``
    kind: str = "linear"  # "linear" | "embedding"
    keys: dict[str, str] = field(default_factory=dict)  # part -> saved adapter key
    weight: str | None = None  # base tensor name of the weight
    bias: str | None = None  # base tensor name of the bias (for lora_bias)
    fan_in_fan_out: bool = False
    r: int = 0
    alpha: float = 0.0
    scaling: float = 0.0
    dora: bool = False


def _delta_linear(
    m: _Module, load: Callable[[str], torch.Tensor], pdt: torch.dtype, scratch: Scratch
) -> torch.Tensor:
    """``Linear.get_delta_weight`` with fp32 parameters: ``transpose(B @ A, fifo) * scaling``, in scratch."""
    import torch

    a = load(m.keys["lora_A.weight"]).to(pdt)
    b = load(m.keys["lora_B.weight"]).to(pdt)
    # PEFT: ``transpose(B @ A, fifo) * scaling``. ``matmul(out=)`` runs the same GEMM into a reused
    # buffer, and the in-place scalar multiply gives the same values elementwise.
    delta = torch.matmul(b, a, out=scratch.get("delta", (b.shape[0], a.shape[1]), pdt))
    return _transpose(delta.mul_(m.scaling), m.fan_in_fan_out)


def _delta_embedding(m: _Module, load: Callable[[str], torch.Tensor], pdt: torch.dtype) -> torch.Tensor:
    """``Embedding.get_delta_weight``: ``(B @ A).T * scaling``."""
    a = load(m.keys["lora_embedding_A"]).to(pdt)
    b = load(m.keys["lora_embedding_B"]).to(pdt)
    return _transpose((b @ a).mul_(m.scaling), True)


#: Elements of the base weight upcast at a time when adding it to the delta: a 4 MiB fp32 block stays
#: in cache between the upcast, the add and the downcast (measured fastest of 64K-4M on the bench CPU).
ADD_BLOCK_ELEMS = 1 << 20


def _weight_step(
    m: _Module, pdt_name: str, scratch: Scratch
) -> Callable[[torch.Tensor, Callable[[str], torch.Tensor]], torch.Tensor]:
    """The merge of one module's weight, in the base dtype (``w`` is never modified)."""

    def step(w: torch.Tensor, load: Callable[[str], torch.Tensor]) -> torch.Tensor:
        import torch

        pdt = torch_dtype(pdt_name)
        if m.kind == "embedding":
            delta = _delta_embedding(m, load, pdt)
            if not m.dora:
                out = w.clone()
                out += delta.to(w.dtype)  # Embedding.merge: two roundings
                return out
            mag = load(m.keys["lora_magnitude_vector"]).to(pdt)
            # DoraEmbeddingVariant.merge_unsafe; DoraEmbeddingLayer has fan_in_fan_out=True
            weight = _transpose(w, True)
            weight = weight + 1 * delta.T
            norm = _row_norm(weight).to(weight.dtype)
            factor = (mag / norm).view(1, -1)
            return (factor * (w + delta)).to(w.dtype)
        delta = _delta_linear(m, load, pdt, scratch)
        if not m.dora:
            # Linear.merge does ``W.data += delta``: W upcast exactly to fp32, one fp32 add, one
            # round-to-nearest-even back to W's dtype. ``delta + W`` gives the same bits (IEEE addition
            # commutes) and avoids torch's slow mixed-dtype in-place kernel (2x on bf16 bases); it is
            # elementwise, so row blocks give the same bits as the whole matrix.
            if w.dtype == delta.dtype:
                return torch.add(delta, w)
            out = torch.empty(w.shape, dtype=w.dtype)
            step = max(1, ADD_BLOCK_ELEMS // max(1, w.shape[1]))
            for i in range(0, w.shape[0], step):
                block = delta[i : i + step]
                wide = scratch.get("block", tuple(block.shape), delta.dtype)
                wide.copy_(w[i : i + step])
                out[i : i + step].copy_(block.add_(wide))
            return out
        mag = load(m.keys["lora_magnitude_vector"]).to(pdt)
        # DoraLinearVariant.merge_unsafe -> DoraLinearLayer.get_weight_norm(W, transpose(delta), scaling=1)
        weight = _transpose(w, m.fan_in_fan_out)
        weight = weight + 1 * _transpose(delta, m.fan_in_fan_out)
        norm = _row_norm(weight).to(weight.dtype)
        factor = _transpose((mag / norm).view(-1, 1), m.fan_in_fan_out)
        return (factor * (w + delta)).to(w.dtype)

    return step


def _row_norm(weight: torch.Tensor) -> torch.Tensor:
    """Row norms exactly as ``DoraLinearLayer.get_weight_norm`` takes them."""
    import torch

    return torch.linalg.norm(weight, dim=1)


def _bias_step(
    m: _Module, pdt_name: str
) -> Callable[[torch.Tensor, Callable[[str], torch.Tensor]], torch.Tensor]:
    """``bias.data += lora_B.bias * scaling`` (after the weight merge; independent of it)."""

    def step(b: torch.Tensor, load: Callable[[str], torch.Tensor]) -> torch.Tensor:
        lb = load(m.keys["lora_B.bias"]).to(torch_dtype(pdt_name))
        out = b.clone()
        out += lb * m.scaling
        return out

    return step


def _replace_step(key: str) -> Callable[[torch.Tensor, Callable[[str], torch.Tensor]], torch.Tensor]:
    """A full tensor saved with the adapter is copied into the base-dtype parameter (``param.copy_``)."""

    def step(w: torch.Tensor, load: Callable[[str], torch.Tensor]) -> torch.Tensor:
        return load(key).to(w.dtype).reshape(w.shape)

    return step


def _compose(steps: list[Callable[..., torch.Tensor]], cast: str | None = None) -> Change:
    """Run ``steps`` in order on one base tensor (the engine casts the result to the output dtype).

    ``cast``: the dtype transformers loads this tensor in when it differs from the stored one; the
    base is cast first, as loading does before PEFT touches it.
    """

    def change(base: torch.Tensor, load: Callable[[str], torch.Tensor]) -> torch.Tensor:
        t = base if cast is None else base.to(torch_dtype(cast))
        for s in steps:
            t = s(t, load)
        return t

    return change


# ------------------------------------------------------------------------------------------- plan


def _base_dir(base: CheckpointInfo) -> Path:
    d = (base.details or {}).get("dir")
    if d:
        return Path(d)
    p = Path(base.path)
    return p if p.is_dir() else p.parent


def _base_key(module: str, param: str, names: set[str]) -> str | None:
    """Base tensor name of ``<module>.<param>``; tolerate a base saved without the model prefix."""
    key = f"{module}.{param}"
    if key in names:
        return key
    parts = module.split(".")
    if len(parts) > 1 and f"{'.'.join(parts[1:])}.{param}" in names:  # e.g. transformer.h.0 -> h.0
        return f"{'.'.join(parts[1:])}.{param}"
    return None


def _tied(base_config: dict[str, Any]) -> bool:
    """Whether the base ties lm_head to the input embedding (transformers' default is True)."""
    return bool(base_config.get("tie_word_embeddings", True))


def _check_tied(
    base_config: dict[str, Any],
    base_by_name: dict[str, TensorInfo],
    modules: dict[str, _Module],
    replacements: dict[str, str],
    problems: list[str],
) -> None:
    """Tied input/output embeddings: refuse what PEFT + save_pretrained would turn into a different
    tensor set or config than the base's (verified against PEFT 0.21.2 / transformers 5.3).

    * modules_to_save on the input embedding replaces the module with an untied copy: PEFT writes a
      new ``lm_head.weight`` and flips ``tie_word_embeddings`` to false in config.json.
    * a base file that stores ``lm_head.weight`` although the config ties it: the merged model comes
      out untied and PEFT saves it with ``tie_word_embeddings=false``.
    """
    vocab = base_config.get("vocab_size")
    if not isinstance(vocab, int):
        return
    hint = (
        "untie the base first (load it with tie_word_embeddings=False, copy the input embedding into "
        "lm_head.weight, save) and merge against that"
    )
    for target, key in replacements.items():
        bt = base_by_name[target]
        if (
            ".base_layer." not in key
            and len(bt.shape) == 2
            and bt.shape[0] == vocab
            and not target.endswith("lm_head.weight")
        ):
            problems.append(
                f"adapter tensor {key!r} (modules_to_save) replaces the input embedding of a base with tied "
                f"embeddings; PEFT's merge unties them (new lm_head.weight, tie_word_embeddings=false) - {hint}"
            )
    lm_heads = [n for n in base_by_name if n == "lm_head.weight" or n.endswith(".lm_head.weight")]
    touched = set(replacements) | {m.weight for m in modules.values() if m.weight}
    vocab_touched = [
        n for n in touched if len(base_by_name[n].shape) == 2 and base_by_name[n].shape[0] == vocab
    ]
    if lm_heads and vocab_touched:
        problems.append(
            f"the base config ties the embeddings but its files also store {lm_heads[0]}, and the adapter changes "
            f"{', '.join(sorted(vocab_touched))}: PEFT's merged model (transformers 5.3) ends up untied and is saved "
            "with tie_word_embeddings=false, so a copy of the base config.json would describe a different model - "
            "if lm_head.weight is meant to be separate, set tie_word_embeddings=false in the base config.json first"
        )


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _group(problems: list[str], modules: set[str]) -> list[str]:
    """Fold "<module>: <same complaint>" lines into one line per complaint, so a rank mismatch on 200
    modules reads as one problem naming a few of them rather than 200 lines."""
    by_text: dict[str, list[str]] = {}
    order: list[str] = []
    for p in problems:
        mod, sep, rest = p.partition(": ")
        key = rest if sep and mod in modules else p
        if key not in by_text:
            by_text[key] = []
            order.append(key)
        if sep and mod in modules:
            by_text[key].append(mod)
    out = []
    for key in order:
        mods = by_text[key]
        if not mods:
            out.append(key)
        elif len(mods) == 1:
            out.append(f"{mods[0]}: {key}")
        else:
            shown = ", ".join(mods[:3]) + (f" and {len(mods) - 3} more" if len(mods) > 3 else "")
            out.append(f"{shown}: {key}")
    return out


def plan_merge(adapter: CheckpointInfo, base: CheckpointInfo, options: MergeOptions) -> MergePlan:
    """Validate ``adapter`` against ``base`` and return the per-tensor changes.

    All problems are collected and raised together in one ``Refused``, before anything is written.
    """
    if options.overrides:
        raise UsageError(
            f"{' and '.join(options.overrides)} cannot be used with a PEFT adapter: its adapter_config.json records "
            "lora_alpha, r and target_modules, and PEFT merges with exactly those (the command line cannot know "
            "better than the file the adapter was saved with)",
            "leave the option out; if adapter_config.json really is wrong, fix it there (keep a copy)",
        )
    ad = _load_adapter(adapter, options)
    cfg = ad.config
    problems: list[str] = []
    try:
        _check_config(cfg, problems)
    except Unsupported as exc:
        raise Unsupported(f"{ad.dir}: {exc.message}", exc.hint) from None
    _check_scales(ad.dir, cfg)
    _check_out(adapter, options)
    if base.kind != "model":
        problems.append(f"the base {base.path} is a {base.format} {base.kind}, not a model")

    base_by_name = {t.name: t for t in base.tensors}
    names = set(base_by_name)
    lora_in_base = sorted(n for n in names if _TUNER_MARKERS.search(n))
    if lora_in_base:
        problems.append(
            f"the base contains adapter tensors ({', '.join(lora_in_base[:3])}{'…' if len(lora_in_base) > 3 else ''}): "
            "it is a PEFT model or an already-merged/unmerged state dict, not a plain base model"
        )
    base_config = (base.details or {}).get("config") or {}
    model_type = str(base_config.get("model_type", ""))
    out_dt = options.out_dtype
    load_dt, dt_source = _load_dtype(base, base_config, options)

    # ---- classify the adapter tensors
    modules: dict[str, _Module] = {}
    replacements: dict[str, str] = {}  # base tensor -> adapter key
    details = adapter.details or {}
    repairs: dict[str, str] = dict(((details.get("adapters") or {}).get(ad.name) or {}).get("repairs") or {})
    if not repairs and ad.name == details.get("adapter_name"):
        repairs = dict(details.get("repairs") or {})
    if repairs:
        old = next(iter(repairs))
        problems.append(
            f"{len(repairs)} adapter key(s) were damaged on disk by the adapter-name stripping of PEFT <= 0.17 "
            f"(e.g. {old!r} instead of {repairs[old]!r}); PEFT would silently load none of them - restore '.lora_' "
            "in the key names first (see 'ckpt-tool inspect')"
        )
    unprefixed: list[str] = []
    unknown: list[str] = []
    absent: list[str] = []
    for key, t in ad.tensors.items():
        if key in repairs:
            continue
        if not key.startswith(KEY_PREFIX):
            unprefixed.append(key)
            continue
        rest = key[len(KEY_PREFIX) :]
        mm = _LORA_KEY.match(rest)
        if mm:
            mod = modules.setdefault(mm["mod"], _Module(mm["mod"]))
            mod.keys[mm["part"]] = key
            continue
        if _TUNER_MARKERS.search(rest):
            unknown.append(key)
            continue
        target = rest.replace(".base_layer.", ".")
        target_key = (
            target if target in names else _base_key(*target.rsplit(".", 1), names) if "." in target else None
        )
        if target_key is None:
            if target.split(".")[-2:-1] == ["lm_head"] and _tied(base_config):
                problems.append(
                    f"adapter tensor {key!r} (modules_to_save) replaces lm_head, which the base ties to the input "
                    "embedding (no lm_head.weight in its files); PEFT's merge unties them and rewrites config.json - "
                    "untie the base first (load with tie_word_embeddings=False, copy the embedding into lm_head, save)"
                )
            else:
                absent.append(key)
            continue
        bt = base_by_name[target_key]
        if tuple(t.shape) != tuple(bt.shape):
            problems.append(
                f"adapter tensor {key!r} has shape {list(t.shape)} but base {target_key!r} has {list(bt.shape)} "
                "(was the vocabulary resized? resize the base the same way first)"
            )
            continue
        if t.dtype not in FLOAT_DTYPES or bt.dtype not in FLOAT_DTYPES:
            problems.append(f"adapter tensor {key!r}: dtype {t.dtype} / base {bt.dtype} is not a float dtype")
            continue
        replacements[target_key] = key

    for keys, what in (
        (unprefixed, f"do not start with {KEY_PREFIX!r} (not a PEFT save; PEFT would silently skip them)"),
        (unknown, "are not LoRA tensors ckpt-tool knows how to merge"),
        (absent, "are full tensors (modules_to_save / base_layer) whose target is not in the base"),
    ):
        if keys:
            problems.append(f"{len(keys)} adapter tensor(s) {what}: {_examples(keys)}")

    # ---- check and finish each adapted module
    use_dora = bool(cfg.get("use_dora"))
    tied = _tied(base_config)
    undecided: list[_Module] = []  # square c_attn/c_proj/c_fc of a model type not known here
    layouts: set[bool] = set()  # Conv1D (True) / Linear (False) layouts seen on non-square c_* weights
    for name, m in sorted(modules.items()):
        parts = set(m.keys)
        emb = {"lora_embedding_A", "lora_embedding_B"} & parts
        lin = {"lora_A.weight", "lora_B.weight", "lora_B.bias"} & parts
        if emb and lin:
            problems.append(f"{name}: has both lora_A/B and lora_embedding_A/B")
            continue
        m.kind = "embedding" if emb else "linear"
        need = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A.weight", "lora_B.weight")
        missing = [p for p in need if p not in parts]
        if use_dora and "lora_magnitude_vector" not in parts:
            missing.append("lora_magnitude_vector")
        if cfg.get("lora_bias") and not emb and "lora_B.bias" not in parts:
            missing.append("lora_B.bias (lora_bias is true)")
        if "lora_B.bias" in parts and not cfg.get("lora_bias"):
            problems.append(
                f"{name}: has lora_B.bias but lora_bias is false in adapter_config.json (PEFT would ignore it)"
            )
            continue
        if missing:
            problems.append(f"{name}: missing {', '.join(missing)} in the adapter file")
            continue
        if "lora_magnitude_vector" in parts and not use_dora:
            problems.append(f"{name}: has lora_magnitude_vector but use_dora is false in adapter_config.json")
            continue
        m.dora = use_dora
        m.weight = _base_key(name, "weight", names)
        if m.weight is None:
            if name.split(".")[-1] == "lm_head" and tied:
                problems.append(
                    f"{name}: the base ties lm_head to the input embedding (no lm_head.weight in its files); PEFT's "
                    "merge would change the shared matrix - untie the base first (load with "
                    "tie_word_embeddings=False, copy the embedding into lm_head, save) and merge against that"
                )
            else:
                problems.append(f"{name}: targeted by the adapter but its weight is not in the base")
            continue
        shapes = {p: tuple(ad.tensors[k].shape) for p, k in m.keys.items()}
        bad = [
            p
            for p, s in shapes.items()
            if math.prod(s) == 0 or len(s) != (1 if p in ("lora_B.bias", "lora_magnitude_vector") else 2)
        ]
        if bad:
            problems.append(
                f"{name}: {', '.join(f'{p} {list(shapes[p])}' for p in bad)} - empty or flattened LoRA tensors "
                "(typical of a DeepSpeed ZeRO-3 save without gathering; re-save with the parameters gathered)"
            )
            continue
        dtypes = {ad.tensors[k].dtype for k in m.keys.values()}
        if not dtypes <= FLOAT_DTYPES:
            problems.append(f"{name}: adapter dtypes {sorted(dtypes)} are not all float dtypes")
            continue
        wt = base_by_name[m.weight]
        if wt.dtype not in ("F16", "BF16", "F32", "F64"):
            problems.append(
                f"{name}: base weight dtype {wt.dtype} cannot be merged (quantized or integer base?)"
            )
            continue
        m.r, m.alpha, m.scaling = _scaling(cfg, name)
        ws = tuple(wt.shape)
        if len(ws) != 2:
            problems.append(
                f"{name}: base weight has shape {list(ws)}; only Linear, Conv1D and Embedding LoRA are supported"
            )
            continue
        if m.kind == "embedding":
            ra, num = shapes["lora_embedding_A"]
            dim, rb = shapes["lora_embedding_B"]
            if (ra, rb) != (m.r, m.r):
                problems.append(
                    f"{name}: lora_embedding_A/B ranks {ra}/{rb} disagree with r={m.r} from adapter_config.json"
                )
                continue
            if ws != (num, dim):
                problems.append(f"{name}: LoRA delta is {[num, dim]} but the base embedding is {list(ws)}")
                continue
            out_features = dim
        else:
            ra, fin = shapes["lora_A.weight"]
            fout, rb = shapes["lora_B.weight"]
            if (ra, rb) != (m.r, m.r):
                problems.append(
                    f"{name}: lora_A/lora_B ranks {ra}/{rb} disagree with r={m.r} from adapter_config.json"
                )
                continue
            fits_linear, fits_conv1d = ws == (fout, fin), ws == (fin, fout)
            if not (fits_linear or fits_conv1d):
                problems.append(
                    f"{name}: LoRA delta is {[fout, fin]} (B {list(shapes['lora_B.weight'])} @ A "
                    f"{list(shapes['lora_A.weight'])}) but the base weight is {list(ws)}"
                )
                continue
            if fits_linear and fits_conv1d:
                # square: only the module type tells; PEFT forces fan_in_fan_out per type
                # (dispatch_default: nn.Linear -> False, transformers Conv1D -> True)
                conv1d = _is_conv1d(model_type, name)
                if conv1d is None:
                    undecided.append(m)
                else:
                    m.fan_in_fan_out = conv1d
            else:
                m.fan_in_fan_out = fits_conv1d  # the stored layout says which module type it is
                if name.rsplit(".", 1)[-1] in CONV1D_LEAVES:
                    layouts.add(fits_conv1d)
            out_features = fout
            if "lora_B.bias" in parts:
                if shapes["lora_B.bias"] != (fout,):
                    problems.append(
                        f"{name}: lora_B.bias has shape {list(shapes['lora_B.bias'])}, expected {[fout]}"
                    )
                    continue
                m.bias = _base_key(name, "bias", names)
                if m.bias is None:
                    problems.append(
                        f"{name}: lora_bias needs a base bias, but the base has none for this module"
                    )
                    continue
        if m.dora and shapes["lora_magnitude_vector"] != (out_features,):
            problems.append(
                f"{name}: lora_magnitude_vector has shape {list(shapes['lora_magnitude_vector'])}, expected {[out_features]}"
            )
            continue
    if undecided and len(layouts) == 1:
        for m in undecided:  # the model's other c_* weights show which module type it uses
            m.fan_in_fan_out = next(iter(layouts))
    elif undecided:
        problems.append(
            f"{_examples([m.name for m in undecided])}: square weights named like transformers Conv1D modules in a "
            f"model of type {model_type or 'unknown (no config.json)'}: whether they are Conv1D (PEFT transposes "
            "their delta) or nn.Linear (it does not, whatever fan_in_fan_out says) cannot be told from the files "
            "- pass the base model directory with its config.json"
        )
    if not modules and not replacements:
        problems.append("the adapter file holds no LoRA tensors")
    _check_scales(ad.dir, cfg, {n: m for n, m in modules.items() if m.r})
    if tied:
        _check_tied(base_config, base_by_name, modules, replacements, problems)
    if problems:
        problems = _group(problems, set(modules))
        raise Refused(
            f"cannot merge {ad.dir} into {base.path}: {len(problems)} problem(s): " + "; ".join(problems),
            "fix the inputs listed above (nothing was written)",
        )

    # ---- build the changes (replacement first, as load_state_dict runs before merge)
    keep_fp32 = _keep_fp32_regex(model_type, load_dt)

    def loaded(t: TensorInfo) -> str:
        """The dtype a base tensor has once transformers loaded it (``from_pretrained(base, dtype=...)``)."""
        if not load_dt or t.dtype not in FLOAT_DTYPES:
            return t.dtype
        return "F32" if keep_fp32 is not None and keep_fp32.search(t.name) else load_dt

    def pdt_name(bt: TensorInfo) -> str:
        """Dtype of PEFT's adapter parameters: the base dtype, upcast to fp32 unless it is fp64."""
        return "F64" if loaded(bt) == "F64" else "F32"

    steps: dict[str, list[Callable[..., Any]]] = {}
    scratch = Scratch()  # shared by every step: they run one at a time on the engine thread
    for target, key in replacements.items():
        steps.setdefault(target, []).append(_replace_step(key))
    for m in modules.values():
        assert m.weight is not None
        steps.setdefault(m.weight, []).append(_weight_step(m, pdt_name(base_by_name[m.weight]), scratch))
        if m.bias:
            steps.setdefault(m.bias, []).append(_bias_step(m, pdt_name(base_by_name[m.bias])))

    out_dtype: dict[str, str] = {}
    changes: dict[str, Change] = {}
    for t in base.tensors:
        out_dtype[t.name] = loaded(t)
        if t.name in steps:
            cast = loaded(t) if loaded(t) != t.dtype else None
            changes[t.name] = _compose(steps[t.name], cast)
    recast = sorted({t.dtype for t in base.tensors if loaded(t) != t.dtype})
    warnings: list[str] = []
    if recast and dt_source != "--dtype":
        warnings.append(
            f"the base is stored in {'/'.join(recast)} but its config.json says {dt_source.split()[-1]} "
            f"{base_config.get(dt_source.split()[-1])!r}: like PEFT's default flow "
            f"(AutoModelForCausalLM.from_pretrained(base), dtype='auto' follows config.json) the base is loaded "
            f"as {load_dt} before merging, so the merged model is {load_dt}"
            + (f" (except what transformers keeps in fp32 for {model_type})" if keep_fp32 is not None else "")
            + "; pass --dtype to load it in another dtype (as from_pretrained(base, dtype=...) does)"
        )
    used = {k for m in modules.values() for k in m.keys.values()} | set(replacements.values())
    adapter_tensors = {k: v for k, v in ad.tensors.items() if k in used}

    bdir = _base_dir(base)
    copy_files = [bdir / f for f in ("config.json", "generation_config.json") if (bdir / f).is_file()]
    copy_files += tokenizer_sources(adapter, ad, bdir).values()
    recorded_base, base_warnings = (
        compare_with_recorded(adapter, base, base_config) if options.base is not None else (locate_recorded_base(adapter), [])
    )
    warnings += base_warnings
    scales = sorted({m.scaling for m in modules.values()})
    summary = {
        "adapter_name": ad.name,
        "adapter_dir": str(ad.dir),
        "peft_type": "LORA",
        "lora": {
            "r": cfg.get("r", 8),
            "alpha": cfg.get("lora_alpha", 8),
            "scales": scales,
            "modules": len(modules),
            "use_rslora": bool(cfg.get("use_rslora")),
            "use_dora": use_dora,
            "embedding_modules": sum(m.kind == "embedding" for m in modules.values()),
            "fan_in_fan_out_modules": sum(m.fan_in_fan_out for m in modules.values()),
            "bias_modules": sum(bool(m.bias) for m in modules.values()),
        },
        "replaced_tensors": sorted(replacements),
        "out_dtype": out_dt or "auto",
        "load_dtype": load_dt,
        "dtype_source": dt_source,
        "reference": "peft merge_and_unload (bit-identical)",
        "hyperparameters": {"source": "adapter_config.json"},
    }
    if recorded_base is not None:
        summary["recorded_base"] = recorded_base
    return MergePlan(
        base=base,
        adapter=adapter,
        changes=changes,
        out_dtype=out_dtype,
        adapter_tensors=adapter_tensors,
        layout="hf",
        copy_files=copy_files,
        summary=summary,
        warnings=warnings,
        protected_dirs=_adapter_dirs(adapter),
        identity=[ad.weights, ad.dir / CONFIG_NAME],
    )


def tokenizer_sources(adapter: CheckpointInfo, ad: _Adapter, base_dir: Path) -> dict[str, Path]:
    """The tokenizer (and chat template) of the merged model: the adapter's own folder first, then the
    save root (Trainer writes the tokenizer there), then the base (``sidefiles.tokenizer_files``). A base in
    the Hugging Face cache links its files into the cache's blobs, which is allowed for that folder only."""
    from ckpt_tool.io import hfcache
    from ckpt_tool.io.sidefiles import tokenizer_files

    dirs = [ad.dir]
    root = _adapter_root(adapter)
    if root is not None and not _same_dir(root, ad.dir):
        dirs.append(root)
    sources: list[tuple[Path, Path | None]] = [(d, None) for d in dirs]
    sources.append((base_dir, hfcache.repo_root(base_dir)))
    return tokenizer_files(sources)


def _adapter_dirs(adapter: CheckpointInfo) -> list[Path]:
    """Every folder of the PEFT save: the root and each adapter's own dir (a merged model written into
    one of them sits next to an adapter_config.json, and transformers then loads it as base + adapter)."""
    details = adapter.details or {}
    dirs = [Path(d["dir"]) for d in (details.get("adapters") or {}).values() if d.get("dir")]
    root = _adapter_root(adapter)
    if root is not None:
        dirs.append(root)
    return dirs


def _check_out(adapter: CheckpointInfo, options: MergeOptions) -> None:
    """``--out`` into a folder holding an adapter_config.json (this adapter's or any other)."""
    out = (options.extra or {}).get("out")
    if out is None:
        return
    out = Path(out)
    if (out / CONFIG_NAME).exists() or any(_same_dir(out, d) for d in _adapter_dirs(adapter)):
        raise Refused(
            f"--out {out} is an adapter folder (it holds {CONFIG_NAME}): from_pretrained on it loads the base "
            f"named in {CONFIG_NAME} plus the adapter instead of the merged weights, and whatever loads the merged "
            "weights with the adapter applies the delta twice",
            "write the merged model to a new directory with --out",
        )


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _is_conv1d(model_type: str, module: str) -> bool | None:
    """Whether PEFT sees ``module`` as transformers' ``Conv1D`` (True) or ``nn.Linear`` (False).

    None for a ``c_attn``/``c_proj``/``c_fc``/``q_attn`` of a model type not listed here (remote code
    such as Qwen-1 names nn.Linear modules that way): the caller decides from the model's other weights.
    """
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in CONV1D_LEAVES or model_type in LINEAR_C_MODEL_TYPES:
        return False
    if model_type in CONV1D_MODEL_TYPES:
        return leaf in CONV1D_MODEL_TYPES[model_type]
    return None


def _keep_fp32_regex(model_type: str, load_dt: str | None) -> re.Pattern[str] | None:
    """transformers' dtype plan for this model type and load dtype: the tensors it keeps in fp32."""
    lists = KEEP_FP32.get(model_type)
    if lists is None or load_dt not in ("F16", "BF16"):
        return None
    globs = list(lists[1]) + (list(lists[0]) if load_dt == "F16" else [])
    return re.compile("|".join(f"(?:{g.replace('*', '.*')})" for g in globs)) if globs else None


def _load_dtype(base: CheckpointInfo, config: dict[str, Any], options: MergeOptions) -> tuple[str | None, str]:
    """The dtype transformers loads the base in, and where it comes from.

    ``--dtype X`` is ``from_pretrained(base, dtype=X)``. Otherwise transformers 5's default
    ``dtype="auto"``: config.json ``dtype`` (else the legacy ``torch_dtype``), else the dtype of the
    first floating tensor (``get_state_dict_dtype``; here only when every floating tensor agrees).
    """
    if options.out_dtype:
        return options.out_dtype, "--dtype"
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if value is None:
            continue
        name = CONFIG_DTYPES.get(value) if isinstance(value, str) else None
        if name is None:
            raise Unsupported(
                f"{base.path}: config.json {key} = {value!r:.40} is not a floating dtype ckpt-tool can load the "
                "base in (transformers would fail, or load a quantized model)",
                "pass --dtype bf16, fp16 or fp32 to say which dtype to load the base in",
            )
        return name, f"config.json {key}"
    floats = {t.dtype for t in base.tensors if t.dtype in FLOAT_DTYPES}
    if len(floats) > 1:
        raise Refused(
            f"{base.path}: config.json records no dtype and the base mixes {', '.join(sorted(floats))}: "
            "transformers would load everything in the dtype of the first floating tensor of the first file",
            "pass --dtype to say which dtype to load the base in",
        )
    return (next(iter(floats)) if floats else None), "stored (config.json has no dtype)"
