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

The change functions below repeat those torch ops in the same order and on tensors of the same
shape, dtype and memory layout, which is what makes the output bit-identical. Everything that is
not "base + delta" (PiSSA/OLoRA/CorDA/LoftQ/LoRA-GA inits rewrite the base, layer replication,
other LoRA variants, other tuners) is refused before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import NotFound, Refused
from ckpt_tool.io.container import read_container
from ckpt_tool.io.tensors import Scratch, torch_dtype
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.merge_plan import Change, MergeOptions, MergePlan
from ckpt_tool_peft.detect import DEFAULT_NAME, KEY_PREFIX, pattern_value

if TYPE_CHECKING:
    import torch

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
# The modules of these architectures are transformers' ``Conv1D`` (weight stored as (in, out)); PEFT
# forces fan_in_fan_out=True for them whatever the config says. Only needed for square weights,
# where the shapes alone cannot tell Linear from Conv1D.
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
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


def find_base(adapter: CheckpointInfo) -> Path | None:
    """The base model named in ``adapter_config.json`` if it is an existing local model dir.

    PEFT passes ``base_model_name_or_path`` to ``from_pretrained``, which treats it as a local path
    first (relative to the working directory). A Hub id is never downloaded: merge is offline and
    the user must give ``--base``.
    """
    config = (adapter.details or {}).get("config") or {}
    name = config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        return None
    candidates = [Path(name).expanduser()]
    adapter_dir = _adapter_root(adapter)
    if not candidates[0].is_absolute() and adapter_dir is not None:
        candidates.append(adapter_dir / name)
    for cand in candidates:
        if cand.is_dir() and (cand / "config.json").is_file():
            return cand
    return None


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


def _check_config(cfg: dict[str, Any], problems: list[str]) -> None:
    """Refuse everything whose merge is not "base + LoRA delta" the way this module computes it."""
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        what = {
            "IA3": "IA3 scales base weights by learned vectors; its merge is not implemented here",
            "ADALORA": "AdaLoRA (SVD form with lora_E and rank masks) is not implemented here",
        }.get(peft_type, "only LoRA adapters can be merged by ckpt-tool")
        problems.append(f"peft_type is {cfg.get('peft_type')!r}: {what} (use PEFT's merge_and_unload)")
        return
    init = cfg.get("init_lora_weights", True)
    if init not in SAFE_INITS:
        if isinstance(init, str) and re.match(r"(pissa|olora|corda|loftq|lora_ga)", init.lower()):
            problems.append(
                f"init_lora_weights={init!r} rewrote the base weights when the adapter was created, so the "
                "original base + this delta is not the fine-tuned model (merge with the modified base PEFT saved, "
                "or convert the adapter with save_pretrained(path_initial_model_for_weight_conversion=...) "
                "and merge the converted adapter)"
            )
        else:
            problems.append(f"init_lora_weights={init!r} is a LoRA variant ckpt-tool cannot merge exactly")
    if cfg.get("layer_replication"):
        problems.append(
            "layer_replication is set: the adapted model has duplicated layers that share base weights, "
            "which PEFT itself refuses to merge"
        )
    for key in OTHER_VARIANTS:
        if cfg.get(key):
            problems.append(
                f"{key} is set: that LoRA variant has its own merge rule, not implemented by ckpt-tool"
            )
    if cfg.get("ensure_weight_tying") or cfg.get("target_modules_to_tie"):
        problems.append(
            "ensure_weight_tying / target_modules_to_tie (adapters tied across layers) is not supported"
        )
    for key in ("r", "lora_alpha"):
        v = cfg.get(key, 8)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            problems.append(f"{key}={v!r} in adapter_config.json is not a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        v = cfg.get(key) or {}
        if not isinstance(v, dict):
            problems.append(f"{key} in adapter_config.json is not a mapping")


def _scaling(cfg: dict[str, Any], module: str) -> tuple[int, float, float]:
    """(r, alpha, scaling) of one module, as ``LoraModel._create_and_replace`` + ``update_layer`` compute them."""
    r = pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8))
    alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
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


def _compose(steps: list[Callable[..., torch.Tensor]]) -> Change:
    """Run ``steps`` in order on one base tensor (the engine casts the result to the output dtype)."""

    def change(base: torch.Tensor, load: Callable[[str], torch.Tensor]) -> torch.Tensor:
        t = base
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
    ad = _load_adapter(adapter, options)
    cfg = ad.config
    problems: list[str] = []
    _check_config(cfg, problems)
    if problems and str(cfg.get("peft_type", "")).upper() != "LORA":
        raise Refused(f"{ad.dir}: cannot merge this adapter: " + "; ".join(problems))
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
    fifo_cfg = bool(cfg.get("fan_in_fan_out"))
    tied = _tied(base_config)
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
            if ws == (fout, fin) and ws == (fin, fout):
                # square: only the module type tells; PEFT forces fan_in_fan_out per type
                if model_type in CONV1D_MODEL_TYPES:
                    m.fan_in_fan_out = name.split(".")[-1] != "lm_head"
                else:
                    m.fan_in_fan_out = fifo_cfg
            elif ws == (fout, fin):
                m.fan_in_fan_out = False
            elif ws == (fin, fout):
                m.fan_in_fan_out = True
            else:
                problems.append(
                    f"{name}: LoRA delta is {[fout, fin]} (B {list(shapes['lora_B.weight'])} @ A "
                    f"{list(shapes['lora_A.weight'])}) but the base weight is {list(ws)}"
                )
                continue
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
    if not modules and not replacements:
        problems.append("the adapter file holds no LoRA tensors")
    if tied:
        _check_tied(base_config, base_by_name, modules, replacements, problems)
    if problems:
        problems = _group(problems, set(modules))
        raise Refused(
            f"cannot merge {ad.dir} into {base.path}: {len(problems)} problem(s): " + "; ".join(problems),
            "fix the inputs listed above (nothing was written)",
        )

    # ---- build the changes (replacement first, as load_state_dict runs before merge)
    def pdt_name(bt: TensorInfo) -> str:
        """Dtype of PEFT's adapter parameters: the base dtype, upcast to fp32 unless it is fp64."""
        return "F64" if bt.dtype == "F64" else "F32"

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
        out_dtype[t.name] = out_dt if (out_dt and t.dtype in FLOAT_DTYPES) else t.dtype
        if t.name in steps:
            changes[t.name] = _compose(steps[t.name])
    used = {k for m in modules.values() for k in m.keys.values()} | set(replacements.values())
    adapter_tensors = {k: v for k, v in ad.tensors.items() if k in used}

    bdir = _base_dir(base)
    copy_files = [bdir / f for f in ("config.json", "generation_config.json") if (bdir / f).is_file()]
    scales = sorted({m.scaling for m in modules.values()})
    summary = {
        "adapter_name": ad.name,
        "adapter_dir": str(ad.dir),
        "peft_type": "LORA",
        "r": cfg.get("r", 8),
        "lora_alpha": cfg.get("lora_alpha", 8),
        "use_rslora": bool(cfg.get("use_rslora")),
        "use_dora": use_dora,
        "lora_modules": len(modules),
        "embedding_modules": sum(m.kind == "embedding" for m in modules.values()),
        "fan_in_fan_out_modules": sum(m.fan_in_fan_out for m in modules.values()),
        "lora_bias_modules": sum(bool(m.bias) for m in modules.values()),
        "replaced_tensors": sorted(replacements),
        "scales": scales,
        "changed_tensors": len(changes),
        "out_dtype": out_dt or "auto",
        "reference": "peft merge_and_unload (bit-identical)",
    }
    return MergePlan(
        base=base,
        adapter=adapter,
        changes=changes,
        out_dtype=out_dtype,
        adapter_tensors=adapter_tensors,
        layout="hf",
        copy_files=copy_files,
        summary=summary,
    )
