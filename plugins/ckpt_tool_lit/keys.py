"""What a LitGPT state dict holds, from its key names alone.

Shared by detection and migration: the file *name* of a LitGPT checkpoint has
meant different things over time (formats.md §2.2), its *keys* have not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LORA = "lora"
ADAPTER = "adapter"
ADAPTER_V2 = "adapter_v2"
FULL = "full"
UNKNOWN = "unknown"

# Suffix a LitGPT adapter file gets in today's final/ (``lit_model.pth`` + suffix).
WEIGHTS_NAME = {
    LORA: "lit_model.pth.lora",
    ADAPTER: "lit_model.pth.adapter",
    ADAPTER_V2: "lit_model.pth.adapter_v2",
    FULL: "lit_model.pth",
}

_LIT_MARKERS = ("transformer.", "lm_head.")
_LORA_RE = re.compile(r"\.lora_[AB]$")
_V1_RE = re.compile(r"(adapter_wte\.weight|gating_factor)$")
_V2_RE = re.compile(r"(adapter_scale|adapter_bias)$")


def looks_lit(keys: Iterable[str]) -> bool:
    """True when every key is a LitGPT GPT parameter name."""
    keys = list(keys)
    return bool(keys) and all(k.startswith(_LIT_MARKERS) for k in keys)


def classify(keys: Iterable[str]) -> str:
    """Return ``lora`` / ``adapter`` / ``adapter_v2`` / ``full`` / ``unknown`` for a state dict.

    A file holding only LoRA (or adapter) tensors is an adapter whatever its
    name; a file that also holds the base weights (``transformer.wte.weight``)
    is a full model, possibly with LoRA tensors left in (an unmerged training
    state).
    """
    keys = list(keys)
    if not looks_lit(keys):
        return UNKNOWN
    has_base = any(k == "transformer.wte.weight" for k in keys)
    has_lora = any(_LORA_RE.search(k) for k in keys)
    has_v1 = any(_V1_RE.search(k) for k in keys)
    has_v2 = any(_V2_RE.search(k) for k in keys)
    if has_base and not (has_lora or has_v1 or has_v2):
        return FULL
    if has_lora and not (has_v1 or has_v2):
        return LORA if not has_base else FULL
    if has_v2:
        # v2 adds adapter_scale/adapter_bias (plus norm copies); v1 tensors may
        # come along (v2 keeps the prefix adapter too)
        return ADAPTER_V2 if not has_base else FULL
    if has_v1:
        return ADAPTER if not has_base else FULL
    return FULL if has_base else UNKNOWN


def lora_modules(keys: Iterable[str]) -> list[str]:
    """Module names (without ``.lora_A``/``.lora_B``) that carry LoRA tensors, in key order."""
    seen: dict[str, None] = {}
    for k in keys:
        if _LORA_RE.search(k):
            seen[k.rsplit(".", 1)[0]] = None
    return list(seen)


def module_kind(module: str) -> str:
    """Which LoRA target a LitGPT module is: the ``lora_*`` flag names (qkv, projection, mlp, head) or other.

    ``attn.attn`` is the pre-0.5.5 name of the fused qkv projection.
    """
    if module.endswith((".attn.qkv", ".attn.attn")):
        return "qkv"
    if module.endswith(".attn.proj"):
        return "projection"
    if module == "lm_head":
        return "head"
    if ".mlp." in module:
        return "mlp"
    return "other"
