"""A Hugging Face ``config.json`` as transformers reads it, for every hub family: coded once.

* ``HfView``: values with transformers' class defaults for absent keys (each family's ``HF_DEFAULTS``,
  pinned by tests against transformers 5.3), every value type-checked, refusals worded one way.
* ``read_rope``: the rotary settings in either spelling — transformers 4's ``rope_theta`` +
  ``rope_scaling`` (+ Gemma-3's ``rope_local_base_freq``), transformers 5's ``rope_parameters`` (flat, or
  per layer type) — resolved as transformers 5.3 resolves them (a non-empty ``rope_scaling`` wins; a base
  given twice must agree, because 4.x reads one and 5.x the other).
* What every converted ``config.json`` gets besides the architecture: token ids and the tie from the
  model's original ``config.json`` (``merge_base``), the dtype the weights are written in.

Written configs use the old spelling (``rope_theta``, ``rope_scaling``), which transformers 4 and 5 read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt_tool.errors import InvalidFile, Refused, Unsupported
from ckpt_tool.limits import MAX_DIM, MAX_LAYERS
from ckpt_tool_lit.hub.model_config import _is_int, _is_num, _same

LAYER_TYPES = ("full_attention", "sliding_attention")


class HfView:
    """``config.json`` values, with transformers' defaults (``defaults``) for keys the file leaves out."""

    def __init__(self, hf: Mapping[str, Any], defaults: Mapping[str, Any], source: str = "config.json") -> None:
        if not isinstance(hf, Mapping):
            raise InvalidFile(f"{source}: expected a JSON object, found {type(hf).__name__}")
        self.raw = hf
        self.defaults = defaults
        self.source = source

    def get(self, key: str) -> Any:
        """The file's value when the key is present (``null`` included: it means "none" for a sliding
        window or a softcap), else transformers' default."""
        return self.raw[key] if key in self.raw else self.defaults.get(key)

    def int(self, key: str, maximum: int = MAX_DIM, zero_ok: bool = False) -> int:
        v = self.get(key)
        if v is None:
            raise InvalidFile(f"{self.source}: {key} is missing", "restore config.json from the model repository")
        if not _is_int(v) or v < (0 if zero_ok else 1):
            raise InvalidFile(
                f"{self.source}: {key} = {v!r:.40} is not a {'non-negative' if zero_ok else 'positive'} integer"
            )
        if v > maximum:
            raise InvalidFile(f"{self.source}: {key} = {v} is past the limit of {maximum}")
        return v

    def opt_int(self, key: str, maximum: int = MAX_DIM) -> int | None:
        return None if self.get(key) is None else self.int(key, maximum)

    def num(self, key: str) -> float:
        v = self.get(key)
        if not _is_num(v) or v <= 0:
            raise InvalidFile(f"{self.source}: {key} = {v!r:.40} is not a positive number")
        return v

    def opt_num(self, key: str) -> float | None:
        return None if self.get(key) is None else self.num(key)

    def flag(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise InvalidFile(f"{self.source}: {key} = {v!r:.40} is not true or false")
        return v

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        v = self.raw.get(key)
        if v is not None and not isinstance(v, Mapping):
            raise InvalidFile(f"{self.source}: {key} is not an object")
        return v

    def unsupported(self, what: str, why: str) -> Unsupported:
        return Unsupported(
            f"{self.source}: {what} cannot be converted to LitGPT ({why})",
            "only configurations LitGPT reproduces exactly are converted; nothing was written",
        )

    def refuse(self, key: str, allowed: Sequence[Any], why: str) -> None:
        """Refuse a setting whose value LitGPT cannot reproduce."""
        v = self.get(key)
        if not any(_same(v, a) for a in allowed):
            raise self.unsupported(f"{key} {v!r:.60}", why)

    def layer_types(self, default: Callable[[int], bool]) -> list[int]:
        """Per layer 1 for sliding-window attention: ``layer_types`` when given, else transformers' default rule."""
        n = self.int("num_hidden_layers", MAX_LAYERS)
        lt = self.raw.get("layer_types")
        if lt is None:
            return [int(default(i)) for i in range(n)]
        if not isinstance(lt, list) or len(lt) != n or any(t not in LAYER_TYPES for t in lt):
            raise InvalidFile(
                f"{self.source}: layer_types must list 'sliding_attention' / 'full_attention' for {n} layers"
            )
        return [int(t == "sliding_attention") for t in lt]


# --- rope ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rope:
    """The rotary embedding of one attention type: base, scaling kind and parameters, rotated fraction."""

    theta: float
    kind: str  # rope_type: "default", "linear", "llama3", "yarn", "longrope", ...
    key: str  # where the scaling was read, for messages
    params: Mapping[str, Any]
    partial: float | None  # partial_rotary_factor when config.json gives one
    source: str = "config.json"

    def plain(self, arch: str) -> None:
        """Refuse any scaling: LitGPT's implementation of ``arch`` has plain RoPE only."""
        if self.kind != "default":
            raise Unsupported(
                f"{self.source}: {self.key} type {self.kind!r:.40} cannot be converted to LitGPT "
                f"(LitGPT's {arch} has plain RoPE only)",
                "only configurations LitGPT reproduces exactly are converted; nothing was written",
            )

    def adjustments(self) -> dict[str, Any] | None:
        """LitGPT ``rope_adjustments`` for the scalings LitGPT computes the same way: ``linear`` → ``{factor}``,
        ``llama3`` → its four parameters. YaRN is refused: LitGPT applies no attention factor unless
        ``mscale`` is given, transformers applies ``0.1·ln(factor) + 1``, so the models differ."""

        def number(key: str) -> float:
            v = self.params.get(key)
            if not _is_num(v) or v <= 0:
                raise InvalidFile(f"{self.source}: {self.key}.{key} = {v!r:.40} is not a positive number")
            return v

        if self.kind == "default":
            return None
        if self.kind == "linear":
            return {"factor": number("factor")}
        if self.kind == "llama3":
            omax = self.params.get("original_max_position_embeddings")
            if not _is_int(omax) or omax <= 0:
                raise InvalidFile(f"{self.source}: llama3 rope scaling needs original_max_position_embeddings")
            return {
                "factor": number("factor"),
                "low_freq_factor": number("low_freq_factor"),
                "high_freq_factor": number("high_freq_factor"),
                "original_max_seq_len": omax,
            }
        raise Unsupported(
            f"{self.source}: {self.key} type {self.kind!r:.40} cannot be converted to LitGPT (linear and llama3 convert)",
            "YaRN, dynamic and longrope scalings are computed differently (or not at all) by LitGPT",
        )


def read_rope(h: HfView, layer_type: str | None = None, theta_keys: Sequence[str] = ("rope_theta",)) -> Rope:
    """The RoPE of ``config.json`` (of one attention type for per-layer-type configs: Gemma-3).

    Raises:
        InvalidFile: a base or factor that is not a positive number, a base given twice with different values.
        Unsupported: per-layer-type rope for a family with one rope, two different rotated fractions.
    """
    scaling, params = h.mapping("rope_scaling"), h.mapping("rope_parameters")
    per_type = params is not None and any(k in params for k in LAYER_TYPES)
    if per_type and layer_type is None:
        raise h.unsupported("per-layer-type rope_parameters", "this family has one RoPE for every layer")
    sliding = layer_type == "sliding_attention"
    if per_type:
        d, key = params.get(layer_type) or {}, f"rope_parameters[{layer_type!r}]"
        if not isinstance(d, Mapping):
            raise InvalidFile(f"{h.source}: {key} is not an object")
    elif scaling and not sliding:  # transformers 5.3: a non-empty rope_scaling wins over rope_parameters
        d, key = scaling, "rope_scaling"
    elif params and not sliding:
        d, key = params, "rope_parameters"
    else:  # sliding layers of the old spelling: their own base, never the global scaling
        d, key = {}, "rope_scaling"
    tops = ("rope_local_base_freq",) if sliding else tuple(theta_keys)
    thetas = [d["rope_theta"]] if d.get("rope_theta") is not None else []
    thetas += [h.raw[k] for k in tops if h.raw.get(k) is not None]
    if not thetas:
        thetas = [next((h.defaults[k] for k in tops if h.defaults.get(k) is not None), None)]
    for t in thetas:
        if not _is_num(t) or t <= 0:
            raise InvalidFile(f"{h.source}: rope_theta = {t!r:.40} is not a positive number")
    if len(set(thetas)) > 1:
        raise InvalidFile(
            f"{h.source} gives the RoPE base twice with different values ({thetas[0]} and {thetas[1]}): "
            "transformers 4.x and 5.x would read different ones"
        )
    partials = [p for p in (d.get("partial_rotary_factor"), h.raw.get("partial_rotary_factor")) if p is not None]
    for p in partials:
        if not _is_num(p) or not 0 < p <= 1:
            raise InvalidFile(f"{h.source}: partial_rotary_factor = {p!r:.40} is not a number in (0, 1]")
    if len(set(partials)) > 1:
        raise h.unsupported(
            f"partial_rotary_factor {partials[0]!r} and {partials[1]!r}", "transformers 4.x and 5.x read different ones"
        )
    kind = d.get("rope_type", d.get("type", "default"))
    return Rope(thetas[0], str(kind), key, d, partials[0] if partials else None, h.source)


# --- what every converted config.json gets ----------------------------------------------------------------

#: Token ids are tokenizer facts a ``model_config.yaml`` does not hold. Written as null unless the original
#: ``config.json`` gives them, so that the model classes' defaults (LLaMA bos 1 / eos 2, GPT-NeoX eos 2,
#: Falcon 11, Phi-3 pad 32000 — which breaks loading when the vocabulary is smaller) are not taken for the truth.
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
#: ``config.json`` keys that identify the model: an original config.json that disagrees is another model's.
IDENTITY = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def base_tie(base: Mapping[str, Any] | None) -> bool | None:
    """The tie the model's original config.json states, if it states one."""
    tie = base.get("tie_word_embeddings") if isinstance(base, Mapping) else None
    return tie if isinstance(tie, bool) else None


def merge_base(out: dict[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """Token ids (null, or copied from the original ``config.json`` LitGPT's download keeps beside the
    weights). Refuses a ``base`` that describes another model (a stale or foreign config.json) rather
    than mixing two models' settings."""
    out.update(dict.fromkeys(TOKEN_IDS))
    if base is None:
        return out
    if not isinstance(base, Mapping):
        raise InvalidFile("the original config.json is not a JSON object")
    for key in IDENTITY:
        if key in base and base[key] != out.get(key):
            raise Refused(
                f"the original config.json describes another model: {key} = {base[key]!r:.40}, "
                f"the LitGPT config gives {out.get(key)!r:.40}",
                "remove or fix the config.json next to the checkpoint",
            )
    for key in TOKEN_IDS:
        v = base.get(key)
        if _is_int(v) or (isinstance(v, list) and len(v) <= 64 and all(_is_int(x) for x in v)):
            out[key] = v
    return out


def dtype_keys(dtype: str | None) -> dict[str, str]:
    """The dtype the weights are written in, as transformers 4 (``torch_dtype``) and 5 (``dtype``) spell it."""
    if dtype is None:
        return {}
    from ckpt_tool.model import DTYPE_NAMES

    name = DTYPE_NAMES.get(dtype, dtype)
    return {"torch_dtype": name, "dtype": name}
