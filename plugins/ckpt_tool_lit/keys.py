"""LitGPT's key and module-name grammar, coded once: what a state dict holds, from its key names alone.

Shared by detection, migration, merge and conversion: the file *name* of a LitGPT checkpoint has
meant different things over time (formats.md §2.2), its *keys* have not. The LoRA vocabulary
(``lora_*`` flags, which Linears each MLP class has, which modules ``litgpt.lora.GPT`` adapts) lives
here too, so a merge, a conversion and detection cannot disagree on it.
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
ADAPTER_NAMES = (WEIGHTS_NAME[LORA], WEIGHTS_NAME[ADAPTER], WEIGHTS_NAME[ADAPTER_V2])

#: LitGPT's LoRA flags (``lora_query`` … ``lora_head`` in hyperparameters.yaml, litgpt.lora.Config order);
#: the first three are the parts of the fused ``attn.qkv``, the others name a ``module_kind``.
LORA_FLAGS = ("query", "key", "value", "projection", "mlp", "head")
QKV_PARTS, MODULE_FLAGS = LORA_FLAGS[:3], LORA_FLAGS[3:]
#: The Linears of each LitGPT MLP class (``litgpt.model`` / ``litgpt.lora`` 0.5.13); ``proj`` maps the
#: intermediate size back to ``n_embd``. ``LLaMAMoE`` has a router ``gate`` and ``LLaMAMLP`` experts
#: under ``mlp.experts.<e>.``; ``lora_mlp`` adapts all of them (``litgpt.lora`` has no shared experts).
MLP_LINEARS = {"GptNeoxMLP": ("fc", "proj"), "LLaMAMLP": ("fc_1", "fc_2", "proj"), "GemmaMLP": ("fc_1", "fc_2", "proj")}
MOE = "LLaMAMoE"
MLP_CLASSES = (*MLP_LINEARS, MOE)

_LIT_MARKERS = ("transformer.", "lm_head.")
_LAYER = re.compile(r"\.h\.(\d+)\.")
_LORA_MLP = re.compile(
    r"\.mlp\.(gate|(experts\.\d+\.)?(" + "|".join(sorted({n for ns in MLP_LINEARS.values() for n in ns})) + r"))$"
)
_LORA_KEY = re.compile(r"^(?P<mod>.+)\.lora_(?P<part>[AB])$")
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
    has_lora = any(lora_part(k) for k in keys)
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


def lora_part(key: str) -> tuple[str, str] | None:
    """``transformer.h.0.attn.qkv.lora_A`` → (``transformer.h.0.attn.qkv``, ``"A"``); None for other keys."""
    m = _LORA_KEY.match(key)
    return (m["mod"], m["part"]) if m else None


def lora_modules(keys: Iterable[str]) -> list[str]:
    """Module names (without ``.lora_A``/``.lora_B``) that carry LoRA tensors, in key order."""
    return list(dict.fromkeys(p[0] for k in keys if (p := lora_part(k))))


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


def lora_targets(n_layer: int, mlp_class: str, n_expert: int = 0) -> dict[str, str]:
    """Every module ``litgpt.lora.GPT`` can give LoRA, in its state-dict order → its ``module_kind``."""
    out = {"lm_head": "head"}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        out[p + "attn.qkv"] = "qkv"
        out[p + "attn.proj"] = "projection"
        if mlp_class == MOE:
            out[p + "mlp.gate"] = "mlp"
            out.update({f"{p}mlp.experts.{x}.{n}": "mlp" for x in range(n_expert) for n in MLP_LINEARS["LLaMAMLP"]})
        else:
            out.update({f"{p}mlp.{n}": "mlp" for n in MLP_LINEARS[mlp_class]})
    return out


def is_lora_mlp(module: str) -> bool:
    """Whether an MLP module is one of the Linears ``lora_mlp`` adapts (``lora_targets``, by name alone)."""
    return bool(_LORA_MLP.search(module))


def layer_of(name: str) -> int | None:
    """The block index of a ``transformer.h.<i>.…`` name (also inside a message), or None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def any_layer(name: str) -> str:
    """``transformer.h.3.attn.qkv`` → ``transformer.h.<N>.attn.qkv``: one line for a problem in many layers."""
    return _LAYER.sub(".h.<N>.", name)


def layers_text(layers: Iterable[int]) -> str:
    """``layer 3``, ``layers 0-31`` or ``layers 1, 5, 9`` (eight at most), or "" for none."""
    idx = sorted(set(layers))
    if not idx:
        return ""
    if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"layers {idx[0]}-{idx[-1]}"
    return ("layer " if len(idx) == 1 else "layers ") + ", ".join(map(str, idx[:8])) + (" …" if len(idx) > 8 else "")
