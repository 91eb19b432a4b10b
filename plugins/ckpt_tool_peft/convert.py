"""PEFT adapter directories to and from Hugging Face naming (the ``ckpt_to_hub`` / ``ckpt_from_hub`` hooks).

The hub grammar of an adapter is PEFT's own without ``base_model.model.`` (``HubView``), so both directions
are renames of keys; the knowledge here is PEFT's config: which adapters are plain LoRA, what rank and scale
each module gets (``rank_pattern`` / ``alpha_pattern`` / rsLoRA, resolved exactly as PEFT does), and the
``adapter_config.json`` PEFT 0.21.2 writes (``LoraConfig.save_pretrained`` through
``PeftModel.save_pretrained``: every field, sorted, ``inference_mode: true``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ckpt_tool.errors import InvalidFile, Refused, Unsupported
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops.transform import HUB, HubResult, HubView, SideFile, copy_step
from ckpt_tool_peft.detect import CONFIG_NAME, FORMAT, KEY_PREFIX, LORA_TYPES

OUT = "out"
SRC = "in"
#: The PEFT version whose ``adapter_config.json`` format is written (``peft_version`` records the format).
PEFT_VERSION = "0.21.2"
#: ``LoraConfig().to_dict()`` of PEFT 0.21.2 (pinned by a test): the fields ``save_pretrained`` writes.
LORA_DEFAULTS: dict[str, Any] = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": False,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "monteclora_config": None, "peft_type": "LORA", "peft_version": PEFT_VERSION, "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": None, "target_parameters": None, "task_type": None,
    "trainable_token_indices": None, "use_bdlora": None, "use_dora": False, "use_qalora": False,
    "use_rslora": False, "velora_config": None,
}  # fmt: skip


# --- PEFT dir → hub ------------------------------------------------------------------------------------------


def _not_plain(cfg: dict[str, Any]) -> list[str]:
    """Why the adapter is not ``W + scale·B@A`` on Linears (PEFT semantics; the target decides what it can carry)."""
    from ckpt_tool_peft.merge import _check_config

    problems: list[str] = []
    _check_config(cfg, problems)
    if cfg.get("use_dora"):
        problems.append("use_dora: DoRA rescales every weight row by a learned magnitude")
    if cfg.get("lora_bias"):
        problems.append("lora_bias: a bias is trained with lora_B")
    return problems


def to_hub(source: CheckpointInfo, options: Any) -> HubView | None:
    """A PEFT LoRA adapter dir in hub naming: keys without ``base_model.model.``, the config as PEFT reads it.

    Raises:
        Unsupported: a tuner other than LoRA.
        Refused: keys damaged on disk by old PEFT's adapter-name stripping.
        InvalidFile: keys without the ``base_model.model.`` prefix (not a PEFT save).
    """
    if source.format != FORMAT:
        return None
    details = source.details or {}
    cfg = dict(details.get("config") or {})
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        extra = " (AdaLoRA's SVD form has lora_E singular values and rank masks)" if peft_type in LORA_TYPES else ""
        raise Unsupported(
            f"{source.path}: a PEFT {cfg.get('peft_type')} adapter{extra}: only LoRA adapters convert",
            "merge it into its base with PEFT's merge_and_unload, then convert the merged model",
        )
    repairs = details.get("repairs") or {}
    if repairs:
        old = next(iter(repairs))
        raise Refused(
            f"{source.path}: {len(repairs)} tensor key(s) were damaged on disk by the adapter-name stripping of "
            f"PEFT <= 0.17 (e.g. {old!r} instead of {repairs[old]!r}); PEFT loads none of them",
            "restore '.lora_' in the key names first ('ckpt-tool inspect' lists them), then convert",
        )
    bad = [t.name for t in source.tensors if not t.name.startswith(KEY_PREFIX)]
    if bad:
        raise InvalidFile(
            f"{source.path}: {len(bad)} tensor key(s) do not start with {KEY_PREFIX!r} (e.g. {bad[0]!r}): "
            "not a PEFT save (PEFT would skip them silently)",
            "rename the keys with the prefix, or re-save the adapter with save_pretrained",
        )
    steps = [
        copy_step(SRC, t.name, HUB, t.name[len(KEY_PREFIX) :], t.dtype, t.shape, "PEFT key without base_model.model.")
        for t in source.tensors
    ]
    from ckpt_tool_peft.merge import _scaling

    modules = {}
    for mod, entry in (details.get("modules") or {}).items():
        if entry.get("type", "linear") != "linear":
            continue
        r, alpha, scale = _scaling(cfg, mod)
        modules[mod] = {"r": r, "alpha": alpha, "scale": scale}
    notes = []
    others = [a.name for a in source.adapters if a.name != details.get("adapter_name")]
    if others:
        notes.append(
            f"converted adapter {details.get('adapter_name')!r} only; the directory also holds {', '.join(others)}"
        )
    extra = {
        "modules": modules,
        "not_plain_lora": _not_plain(cfg),
        "adapter_name": details.get("adapter_name"),
        "source_format": FORMAT,
    }
    return HubView("adapter", steps, cfg, {}, extra, notes)


# --- hub → PEFT dir ------------------------------------------------------------------------------------------


def _patterns(view: HubView, r: Any, alpha: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``rank_pattern`` / ``alpha_pattern`` for modules whose r / alpha differ from the global ones.

    PEFT matches a pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)`` and takes the first in dict
    order; the last name component is used when every module of that name has the same value, else the
    escaped full module path.
    """
    modules: dict[str, dict[str, Any]] = (view.extra or {}).get("modules") or {}
    out: list[dict[str, Any]] = [{}, {}]
    for slot, (key, default) in enumerate((("r", r), ("alpha", alpha))):
        by_short: dict[str, dict[str, Any]] = {}
        for mod, info in modules.items():
            by_short.setdefault(mod.rsplit(".", 1)[-1], {})[mod] = info.get(key, default)
        for short, values in sorted(by_short.items()):
            differ = {m: v for m, v in values.items() if v != default}
            if not differ:
                continue
            if len(set(values.values())) == 1:
                out[slot][short] = next(iter(values.values()))
            else:
                for m, v in differ.items():
                    out[slot][re.escape(m)] = v
    return out[0], out[1]


def adapter_config(view: HubView) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT 0.21.2 writes for this adapter (``PeftModel.save_pretrained``)."""
    cfg = {**LORA_DEFAULTS, **{k: v for k, v in (view.config or {}).items()}}
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise Unsupported(f"only LoRA adapters are written in the PEFT layout, not {cfg.get('peft_type')!r}")
    if (view.extra or {}).get("source_format") != FORMAT:
        rank, alpha = _patterns(view, cfg["r"], cfg["lora_alpha"])
        cfg["rank_pattern"] = {**(cfg.get("rank_pattern") or {}), **rank}
        cfg["alpha_pattern"] = {**(cfg.get("alpha_pattern") or {}), **alpha}
        cfg["peft_version"] = PEFT_VERSION
    cfg["inference_mode"] = True  # PeftModel.save_pretrained always saves it so
    if isinstance(cfg.get("target_modules"), (set, tuple)):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    return cfg


def _model_card(cfg: dict[str, Any], view: HubView) -> bytes:
    base = cfg.get("base_model_name_or_path")
    lines = ["---"]
    if isinstance(base, str) and base:
        lines.append(f"base_model: {json.dumps(base)}")
    lines += ["library_name: peft", "tags:", "- lora", "- ckpt-tool", "---", "", "# LoRA adapter", ""]
    family = (view.extra or {}).get("family")
    origin = (view.extra or {}).get("origin") or ("a LitGPT LoRA fine-tune" if family else "another adapter layout")
    lines.append(
        f"Converted by ckpt-tool from {origin} (r={cfg.get('r')}, lora_alpha={cfg.get('lora_alpha')}, target "
        f"modules: {', '.join(cfg.get('target_modules') or [])}). Load it with "
        "`PeftModel.from_pretrained(base_model, this_directory)`."
    )
    return ("\n".join(lines) + "\n").encode()


def from_hub(view: HubView, layout: str, options: Any) -> HubResult | None:
    """A hub adapter as a PEFT dir: ``adapter_model.safetensors`` (keys with ``base_model.model.``),
    ``adapter_config.json`` in PEFT's own format and a short ``README.md`` model card."""
    if layout != FORMAT:
        return None
    if view.kind != "adapter":
        raise Unsupported(
            "a full model cannot be written as a PEFT adapter", "convert it with --to hf (a transformers model dir)"
        )
    cfg = adapter_config(view)
    steps = []
    for s in view.steps:
        for o in s.outs:
            steps.append(copy_step(HUB, o.name, OUT, KEY_PREFIX + o.name, o.dtype, o.shape, "PEFT key"))
    side = [
        SideFile(CONFIG_NAME, data=json.dumps(cfg, indent=2, sort_keys=True).encode()),
        SideFile("README.md", data=_model_card(cfg, view)),
    ]
    summary = {
        "lora": {
            "r": cfg["r"],
            "alpha": cfg["lora_alpha"],
            "targets": cfg.get("target_modules"),
            "rank_pattern": cfg.get("rank_pattern") or {},
            "alpha_pattern": cfg.get("alpha_pattern") or {},
        },
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
    }
    return HubResult(steps, side, {}, summary)
