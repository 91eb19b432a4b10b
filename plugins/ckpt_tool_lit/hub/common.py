"""What the LLaMA-like families (LLaMA, Mistral, Mixtral, Gemma 1-3, Qwen2.5, Qwen3) share.

* ``LIT_DEFAULTS`` and ``LitModel``: a ``model_config.yaml`` as LitGPT 0.5.13's ``Config`` sees it (its
  defaults filled in, derived sizes computed as ``Config.__post_init__`` does), every value type-checked.
  LitGPT itself needs a *known* model name to convert; this does not, so any size converts.
* ``lit_route`` / ``hf_route``: LitGPT's own converter dispatch (by name, then MLP class), coded once,
  because the name decides behaviour in LitGPT (Gemma's ``1 + weight`` norms, which ``copy_weights_*`` runs).
* ``Layout`` → ``table``: one model's full tensor list, LitGPT name ↔ transformers name(s) ↔ shape, from a
  small per-family name map. ``lit_to_hf_steps`` / ``hf_to_lit_steps`` turn the table into transform steps
  after checking the checkpoint against it (every tensor placed or refused by name, every shape checked).
* ``HfView`` and the rope helpers: ``config.json`` values with transformers' defaults for absent keys, in
  both the old spelling (``rope_theta`` + ``rope_scaling``) and transformers 5's ``rope_parameters``.

Bit-exactness with LitGPT's converters: they only rename, ``split`` the fused ``attn.qkv`` rows into q, k,
v (lit → HF) and ``torch.cat((q, k, v))`` (HF → lit), keeping every dtype; the steps do exactly that.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, Refused, Unsupported
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Load, Out, Read, Step, copy_step
from ckpt_tool_lit.geometry import Geometry

if TYPE_CHECKING:
    import torch

#: ``litgpt.Config`` fields and their defaults (litgpt 0.5.13; a test pins this against the installed litgpt).
LIT_DEFAULTS: dict[str, Any] = {
    "name": "",
    "hf_config": {},
    "block_size": 4096,
    "n_layer": 16,
    "n_embd": 4096,
    "vocab_size": 50254,
    "padding_multiple": 512,
    "padded_vocab_size": None,
    "norm_class_name": "LayerNorm",
    "norm_eps": 1e-05,
    "norm_qk": False,
    "norm_qk_type": "default",
    "post_attention_norm": False,
    "post_mlp_norm": False,
    "parallel_residual": True,
    "shared_attention_norm": False,
    "n_head": 32,
    "head_size": None,
    "n_query_groups": None,
    "attn_bias": False,
    "attention_scores_scalar": None,
    "sliding_window_size": None,
    "sliding_window_indices": None,
    "attention_logit_softcapping": None,
    "rope_base": 10000,
    "rotary_percentage": 0.25,
    "rope_condense_ratio": 1,
    "rope_adjustments": None,
    "rope_interleave": False,
    "intermediate_size": None,
    "moe_intermediate_size": None,
    "bias": True,
    "mlp_class_name": "GptNeoxMLP",
    "gelu_approximate": "none",
    "n_expert": 0,
    "n_shared_expert": None,
    "n_expert_groups": None,
    "n_topk_groups": None,
    "n_topk_scores_per_group": None,
    "n_expert_per_token": 0,
    "first_k_dense_replace": None,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": False,
    "scale_embeddings": False,
    "lm_head_bias": False,
    "final_logit_softcapping": None,
    "norm_1": True,
    "norm_2": True,
    "latent_attention": None,
    "rope_local_base_freq": None,
    "rope_indices": None,
}

#: Larger than any real model; a config past these is damaged or hostile (bounds the tensor table).
MAX_LAYERS = 1 << 12
MAX_EXPERTS = 1 << 12
MAX_DIM = 1 << 24

#: Settings that size the model (mapped by every family) or never change the weights or the computation.
SIZES = (
    "name", "hf_config", "block_size", "n_layer", "n_embd", "vocab_size", "padding_multiple",
    "padded_vocab_size", "n_head", "head_size", "n_query_groups", "intermediate_size", "norm_eps", "rope_base",
)  # fmt: skip

#: ``check_features`` value meaning "the family maps whatever value this setting has".
ANY = object()

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_INV_FREQ = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# --- LitGPT's converter dispatch ----------------------------------------------------------------------


def lit_route(name: str, mlp_class_name: str) -> str:
    """The ``copy_weights_*`` LitGPT's ``convert_lit_checkpoint`` picks (0.5.13): by name first, then MLP class."""
    if "falcon" in name:
        return "falcon"
    if name.startswith("Gemma-2"):
        return "gemma_2"
    if name.startswith("Gemma-3"):
        return "gemma_3"
    low = name.lower()
    if low.startswith("phi"):
        return "phi"
    if low.startswith(("qwen2.5", "qwq")):
        return "qwen_2_5"
    if low.startswith("olmo-2-"):
        return "olmo2"
    if low.startswith("qwen3"):
        return "qwen_3"
    if mlp_class_name in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE"):
        return "llama"
    return "gpt_neox"


def hf_route(name: str, mlp_class_name: str) -> str:
    """The ``copy_weights_*`` ``convert_hf_checkpoint`` picks: as ``lit_route`` but Gemma matched case-blind."""
    low = name.lower()
    if "falcon" in name:
        return "falcon"
    if low.startswith("gemma-2"):
        return "gemma_2"
    if low.startswith("gemma-3"):
        return "gemma_3"
    return lit_route(name, mlp_class_name)


def cfg_route(cfg: Any) -> tuple[str, str]:
    """(route, name) of a raw config mapping, never raising (``matches_lit`` must answer for any input)."""
    if not isinstance(cfg, Mapping):
        return "", ""
    name = cfg.get("name")
    mlp = cfg.get("mlp_class_name", LIT_DEFAULTS["mlp_class_name"])
    name = name if isinstance(name, str) else ""
    return lit_route(name, mlp if isinstance(mlp, str) else ""), name


def gemma_like(name: str, mlp_class_name: str) -> bool:
    """LitGPT treats a model as Gemma by name (``"Gemma" in name``: RMSNorm adds 1 to its weight) and MLP class."""
    return "Gemma" in name or mlp_class_name == "GemmaMLP"


def lit_name(hf: Mapping[str, Any], prefix: str, fits: Callable[[str], bool]) -> tuple[str, dict[str, str]]:
    """A LitGPT name (and ``hf_config``) for a converted model: the HF repo name when LitGPT would treat it as
    this family (``fits``), else the repo name behind the family prefix, else the prefix alone.

    Why: LitGPT keys behaviour on the name (``"Gemma" in name`` adds 1 to every RMSNorm weight; ``Gemma-2…``,
    ``Qwen3…`` pick the converter), so a name must route the converted config back to the same family.
    """
    raw = hf.get("_name_or_path")
    org, base = "", ""
    if isinstance(raw, str) and 0 < len(raw) <= 200 and raw.isprintable():
        parts = raw.rstrip("/").split("/")
        base = parts[-1]
        org = parts[-2] if len(parts) >= 2 else ""
    candidates = []
    if base:
        if base.lower().startswith(prefix.lower()):
            candidates.append(prefix + base[len(prefix) :])
        candidates += [base, f"{prefix}-{base}"]
    candidates.append(prefix)
    name = next((n for n in candidates if fits(n)), prefix)
    return name, ({"org": org, "name": base} if org and base else {})


# --- typed readers ------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


class LitModel:
    """A LitGPT model config with LitGPT's defaults and derived sizes applied, the values used here checked.

    Raises ``InvalidFile`` (a value of the wrong type or out of range) or ``Unsupported`` (a setting LitGPT
    0.5.13 does not have, e.g. a legacy ``_mlp_class``), naming the setting.
    """

    def __init__(self, cfg: Mapping[str, Any], source: str = "model_config.yaml") -> None:
        if not isinstance(cfg, Mapping):
            raise InvalidFile(f"{source}: expected a mapping of settings, found {type(cfg).__name__}")
        self.source = source
        unknown = sorted(str(k) for k, v in cfg.items() if k not in LIT_DEFAULTS and v is not None)
        if unknown:
            raise Unsupported(
                f"{source}: setting(s) {', '.join(unknown[:3])} are not LitGPT 0.5.13 Config fields",
                "legacy LitGPT configs are upgraded by `ckpt-tool migrate`; otherwise remove the setting",
            )
        self.v: dict[str, Any] = {**LIT_DEFAULTS, **{k: cfg[k] for k in cfg if k in LIT_DEFAULTS}}
        name = self.v["name"]
        if not isinstance(name, str):
            raise InvalidFile(f"{source}: name = {name!r:.40} is not a string")
        self.name = name
        mlp = self.v["mlp_class_name"]
        if not isinstance(mlp, str):
            raise InvalidFile(f"{source}: mlp_class_name = {mlp!r:.40} is not a string")
        self.mlp = mlp
        self.route = lit_route(name, mlp)
        self.geometry = Geometry.from_config(self.v, source)
        self.n_layer = self.int("n_layer", MAX_LAYERS)
        self.n_embd = self.int("n_embd")
        if self.v["head_size"] is None and self.n_embd % self.geometry.n_head:
            raise InvalidFile(
                f"{source}: n_embd {self.n_embd} is not a multiple of n_head {self.geometry.n_head}"
            )
        vocab = self.int("vocab_size")
        if self.v["padded_vocab_size"] is None:
            self.vocab = find_multiple(vocab, self.int("padding_multiple"))
        else:
            self.vocab = self.int("padded_vocab_size")
        self.block_size = self.int("block_size")
        if self.v["intermediate_size"] is None:
            if mlp == "LLaMAMLP":
                raise InvalidFile(f"{source}: intermediate_size is missing (LitGPT needs it for {mlp})")
            self.intermediate = 4 * self.n_embd
        else:
            self.intermediate = self.int("intermediate_size")
        self.n_expert = self.int("n_expert", MAX_EXPERTS, zero_ok=True)
        moe = self.v["moe_intermediate_size"]
        self.expert_intermediate = self.intermediate if moe is None else self.int("moe_intermediate_size")
        self.norm_eps = self.num("norm_eps")
        self.rope_base = self.num("rope_base")
        self.sliding_window = (
            None if self.v["sliding_window_size"] is None else self.int("sliding_window_size")
        )
        self.sliding_layers = self.indicator("sliding_window_indices", self.sliding_window is not None)
        self.local_rope_layers = self.indicator("rope_indices", self.v["rope_local_base_freq"] is not None)

    # -- accessors ---------------------------------------------------------------------------------

    def int(self, key: str, maximum: int = MAX_DIM, zero_ok: bool = False) -> int:
        v = self.v[key]
        if not _is_int(v) or v < (0 if zero_ok else 1) or v > maximum:
            raise InvalidFile(
                f"{self.source}: {key} = {v!r:.40} is not an integer in [{int(not zero_ok)}, {maximum}]"
            )
        return v

    def num(self, key: str) -> float:
        v = self.v[key]
        if not _is_num(v) or v <= 0:
            raise InvalidFile(f"{self.source}: {key} = {v!r:.40} is not a positive number")
        return v

    def opt_num(self, key: str) -> float | None:
        return None if self.v[key] is None else self.num(key)

    def indicator(self, key: str, used: bool) -> list[int]:
        """A per-layer 0/1 list as ``Config.__post_init__`` makes it (all 1 when unset, a longer list cut)."""
        if not used:
            return [0] * self.n_layer
        v = self.v[key]
        if v is None:
            return [1] * self.n_layer
        if (
            not isinstance(v, list)
            or len(v) < self.n_layer
            or any(x not in (0, 1) or isinstance(x, float) for x in v)
        ):
            raise InvalidFile(f"{self.source}: {key} must be a list of {self.n_layer} zeros and ones")
        return [int(x) for x in v[: self.n_layer]]

    def check_features(self, handled: Mapping[str, Any], arch: str) -> None:
        """Refuse any LitGPT setting ``arch`` cannot express.

        ``handled`` maps a setting to the value it must have, or to ``ANY`` when the family maps (or may
        ignore) whatever it holds; every setting not named, apart from the sizes, must hold LitGPT's default.
        Why: a feature this mapping does not know (parallel residual, partial rotary, biases, a setting a
        later LitGPT adds) would otherwise be converted silently into a different model.
        """
        for key, default in LIT_DEFAULTS.items():
            if key in SIZES:
                continue
            want = handled.get(key, default)
            if want is ANY:
                continue
            have = self.v[key]
            if have != want:
                raise Unsupported(
                    f"{self.source}: {key} = {have!r:.60} has no equivalent in transformers' {arch} "
                    f"(it needs {want!r})",
                    "this LitGPT model cannot be expressed in that architecture; nothing was converted",
                )


class HfView:
    """``config.json`` values, with transformers' defaults (``defaults``) for keys the file leaves out."""

    def __init__(
        self, hf: Mapping[str, Any], defaults: Mapping[str, Any], source: str = "config.json"
    ) -> None:
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
            raise InvalidFile(f"{self.source}: {key} is missing", "restore config.json from the model")
        if not _is_int(v) or v < (0 if zero_ok else 1) or v > maximum:
            raise InvalidFile(
                f"{self.source}: {key} = {v!r:.40} is not an integer in [{int(not zero_ok)}, {maximum}]"
            )
        return v

    def opt_int(self, key: str) -> int | None:
        return None if self.get(key) is None else self.int(key)

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

    def refuse(self, key: str, allowed: Sequence[Any], why: str) -> None:
        """Refuse a setting whose value LitGPT cannot reproduce."""
        v = self.get(key)
        if v not in allowed:
            raise Unsupported(f"{self.source}: {key} = {v!r:.60} has no LitGPT equivalent ({why})")

    def layer_types(self, default: Callable[[int], bool]) -> list[int]:
        """Per layer 1 for sliding-window attention: ``layer_types`` when given, else transformers' default rule."""
        n = self.int("num_hidden_layers", MAX_LAYERS)
        lt = self.raw.get("layer_types")
        if lt is None:
            return [int(default(i)) for i in range(n)]
        if (
            not isinstance(lt, list)
            or len(lt) != n
            or any(t not in ("sliding_attention", "full_attention") for t in lt)
        ):
            raise InvalidFile(
                f"{self.source}: layer_types must list 'sliding_attention' / 'full_attention' for {n} layers"
            )
        return [int(t == "sliding_attention") for t in lt]


# --- rope ---------------------------------------------------------------------------------------------


def hf_rope(h: HfView, layer_type: str | None = None) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, LitGPT rope_adjustments)`` of one attention type of a ``config.json``.

    Reads transformers 5's ``rope_parameters`` (flat, or per layer type for Gemma-3) or the older
    ``rope_theta`` / ``rope_scaling`` (+ Gemma-3's ``rope_local_base_freq`` for sliding layers).
    Only scalings LitGPT computes the same way map: ``linear`` → ``{factor}``, ``llama3`` → its four
    parameters. YaRN is refused: LitGPT applies no attention factor unless ``mscale`` is given, transformers
    applies ``0.1·ln(factor) + 1`` by default, so the models differ.
    """
    params: dict[str, Any]
    rp = h.raw.get("rope_parameters")
    if isinstance(rp, Mapping) and rp:
        if layer_type is not None and ("full_attention" in rp or "sliding_attention" in rp):
            rp = rp.get(layer_type) or {}
        if not isinstance(rp, Mapping):
            raise InvalidFile(f"{h.source}: rope_parameters[{layer_type!r}] is not an object")
        params = dict(rp)
    else:
        scaling = h.raw.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, Mapping):
            raise InvalidFile(f"{h.source}: rope_scaling is not an object")
        params = dict(scaling or {}) if layer_type != "sliding_attention" else {}
    if params.get("rope_theta") is None:
        params["rope_theta"] = h.get(
            "rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta"
        )
    theta = params["rope_theta"]
    if not _is_num(theta) or theta <= 0:
        raise InvalidFile(f"{h.source}: rope_theta = {theta!r:.40} is not a positive number")
    partial_rotary = params.get("partial_rotary_factor", h.raw.get("partial_rotary_factor"))
    if partial_rotary not in (None, 1, 1.0):
        raise Unsupported(
            f"{h.source}: partial_rotary_factor = {partial_rotary!r:.20} (LitGPT's LLaMA-like models rotate whole heads)"
        )
    kind = params.get("rope_type", params.get("type", "default"))
    where = f" ({layer_type})" if layer_type else ""

    def number(key: str) -> float:
        v = params.get(key)
        if not _is_num(v) or v <= 0:
            raise InvalidFile(f"{h.source}: rope scaling{where} {key} = {v!r:.40} is not a positive number")
        return v

    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, {"factor": number("factor")}
    if kind == "llama3":
        omax = params.get("original_max_position_embeddings")
        if not _is_int(omax) or omax <= 0:
            raise InvalidFile(f"{h.source}: llama3 rope scaling needs original_max_position_embeddings")
        return theta, {
            "factor": number("factor"),
            "low_freq_factor": number("low_freq_factor"),
            "high_freq_factor": number("high_freq_factor"),
            "original_max_seq_len": omax,
        }
    raise Unsupported(
        f"{h.source}: rope scaling{where} {kind!r:.40} has no LitGPT equivalent (linear and llama3 convert)",
        "YaRN, dynamic and longrope scalings are computed differently (or not at all) by LitGPT",
    )


def lit_rope_scaling(c: LitModel) -> dict[str, Any] | None:
    """``rope_scaling`` for ``config.json`` from ``rope_adjustments`` / ``rope_condense_ratio``, read as LitGPT's
    ``GPT.rope_cache`` reads them (llama3 when low/high_freq_factor are present, else linear on ``factor``).

    ``rope_condense_ratio`` r divides positions by r: the same as linear scaling with factor r.
    """
    adj = c.v["rope_adjustments"]
    ratio = c.v["rope_condense_ratio"]
    if not _is_num(ratio) or ratio <= 0:
        raise InvalidFile(f"{c.source}: rope_condense_ratio = {ratio!r:.40} is not a positive number")
    if adj is not None and not isinstance(adj, Mapping):
        raise InvalidFile(f"{c.source}: rope_adjustments is not a mapping")
    adj = adj or {}
    if any(k in adj for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim")):
        raise Unsupported(
            f"{c.source}: YaRN rope_adjustments: LitGPT and transformers compute YaRN's attention factor "
            "differently, so the converted model would not be the same"
        )

    def number(key: str) -> float:
        v = adj.get(key)
        if not _is_num(v) or v <= 0:
            raise InvalidFile(f"{c.source}: rope_adjustments.{key} = {v!r:.40} is not a positive number")
        return v

    scaling: dict[str, Any] | None = None
    if "low_freq_factor" in adj or "high_freq_factor" in adj:
        omax = adj.get("original_max_seq_len")
        if not _is_int(omax) or omax <= 0:
            raise InvalidFile(
                f"{c.source}: rope_adjustments.original_max_seq_len is missing or not a positive integer"
            )
        scaling = {
            "rope_type": "llama3",
            "factor": number("factor"),
            "low_freq_factor": number("low_freq_factor"),
            "high_freq_factor": number("high_freq_factor"),
            "original_max_position_embeddings": omax,
        }
    elif "factor" in adj:
        scaling = {"rope_type": "linear", "factor": number("factor")}
    if ratio != 1:
        if scaling is not None:
            raise Unsupported(
                f"{c.source}: rope_condense_ratio together with rope_adjustments has no transformers equivalent"
            )
        scaling = {"rope_type": "linear", "factor": float(ratio)}
    return scaling


def int_if_whole(x: float) -> int | float:
    """LitGPT writes ``rope_base: 500000``; keep configs looking like LitGPT's own."""
    return int(x) if float(x).is_integer() else x


# --- config.json sections shared by the families ---------------------------------------------------------


def hf_base_config(c: LitModel, model_type: str, arch: str, tie: bool, dtype: str | None) -> dict[str, Any]:
    """The ``config.json`` keys every LLaMA-like family writes (old-style rope keys: transformers 4 and 5 read them)."""
    g = c.geometry
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": c.vocab,
        "hidden_size": c.n_embd,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": g.n_head,
        "num_key_value_heads": g.n_query_groups,
        "head_dim": g.head_size,
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": float(c.rope_base),
        "rope_scaling": lit_rope_scaling(c),
        "tie_word_embeddings": tie,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if dtype is not None:
        from ckpt_tool.model import DTYPE_NAMES

        out["torch_dtype"] = DTYPE_NAMES.get(dtype, dtype)
    return out


#: ``config.json`` keys taken from the model's original config (``base``) when it is the same model.
IDENTITY_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def merge_base(out: dict[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add token ids from the original ``config.json`` (LitGPT's download keeps it in the checkpoint dir).

    Refuses a ``base`` that describes another model (a stale or foreign config.json), rather than
    mixing two models' settings.
    """
    if base is None:
        return out
    if not isinstance(base, Mapping):
        raise InvalidFile("the original config.json is not a JSON object")
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key in base and base[key] != out.get(key):
            raise Refused(
                f"the original config.json describes another model: {key} = {base[key]!r:.40}, "
                f"the LitGPT config gives {out.get(key)!r:.40}",
                "remove or fix the config.json next to the checkpoint",
            )
    for key in IDENTITY_KEYS:
        v = base.get(key)
        if v is None or _is_int(v) or (isinstance(v, list) and all(_is_int(x) for x in v) and len(v) <= 64):
            if key in base:
                out[key] = v
    return out


def lit_base_config(h: HfView, name: str, hf_config: dict[str, str]) -> dict[str, Any]:
    """The LitGPT settings every LLaMA-like family maps the same way, from ``config.json``."""
    n_head = h.int("num_attention_heads")
    hidden = h.int("hidden_size")
    head_dim = h.opt_int("head_dim") or hidden // n_head
    groups = h.opt_int("num_key_value_heads") or n_head
    if n_head % groups:
        raise InvalidFile(
            f"{h.source}: num_key_value_heads {groups} does not divide num_attention_heads {n_head}"
        )
    vocab = h.int("vocab_size")
    theta, adj = hf_rope(h, None)
    return {
        **LIT_DEFAULTS,
        "name": name,
        "hf_config": hf_config,
        "block_size": h.int("max_position_embeddings"),
        "n_layer": h.int("num_hidden_layers", MAX_LAYERS),
        "n_embd": hidden,
        "vocab_size": vocab,
        "padded_vocab_size": vocab,
        "norm_class_name": "RMSNorm",
        "norm_eps": h.num("rms_norm_eps"),
        "parallel_residual": False,
        "n_head": n_head,
        "head_size": head_dim,
        "n_query_groups": groups,
        "rope_base": int_if_whole(theta),
        "rotary_percentage": 1.0,
        "rope_adjustments": adj,
        "intermediate_size": h.int("intermediate_size"),
        "bias": False,
        "mlp_class_name": "LLaMAMLP",
    }


# --- the tensor table ---------------------------------------------------------------------------------

#: (LitGPT suffix under ``transformer.h.N.``, transformers suffix under ``model.layers.N.`` or the q/k/v
#: modules it splits into, shape kind)
LayerMap = tuple[tuple[str, "str | tuple[str, ...]", str], ...]


@dataclass(frozen=True)
class Layout:
    """One transformers architecture's names for LitGPT's tensors (per layer, and per MoE expert)."""

    layer: LayerMap
    expert: tuple[tuple[str, str, str], ...] = ()
    expert_prefix: str = ""  # transformers, under the layer: "block_sparse_moe.experts." / "mlp.experts."


@dataclass(frozen=True)
class Variant:
    """One transformers model type a family converts to and from."""

    model_type: str
    arch: str
    layout: Layout
    tied: bool  # transformers' default tie_word_embeddings for this model type


@dataclass(frozen=True)
class Pair:
    """One LitGPT tensor and the transformers tensor(s) it is; several: its row blocks (q, k, v), in order."""

    lit: str
    hf: tuple[str, ...]
    shape: tuple[int, ...]
    rows: tuple[int, ...] = ()

    def hf_shape(self, i: int) -> tuple[int, ...]:
        return (self.rows[i], *self.shape[1:]) if self.rows else self.shape


LM_HEAD = "lm_head.weight"
WTE = ("transformer.wte.weight", "model.embed_tokens.weight")


def _shapes(c: LitModel) -> dict[str, tuple[int, ...]]:
    g, e = c.geometry, c.n_embd
    return {
        "embd": (e,),
        "head": (g.head_size,),
        "qkv": (g.qkv_rows, e),
        "qkv_bias": (g.qkv_rows,),
        "o": (e, g.n_head * g.head_size),
        "up": (c.intermediate, e),
        "down": (e, c.intermediate),
        "router": (c.n_expert, e),
        "eup": (c.expert_intermediate, e),
        "edown": (e, c.expert_intermediate),
    }


def table(c: LitModel, layout: Layout, n_tensors: int) -> list[Pair]:
    """Every tensor of the model ``c`` describes except embeddings and head, LitGPT state-dict order.

    Refuses before building when the config calls for far more tensors than the checkpoint holds, so a
    hostile ``n_layer``/``n_expert`` costs nothing.
    """
    experts = c.n_expert if layout.expert else 0
    if layout.expert and experts == 0:
        raise InvalidFile(f"{c.source}: n_expert is 0 but mlp_class_name is {c.mlp}")
    count = 3 + c.n_layer * (len(layout.layer) + experts * len(layout.expert))
    if count > n_tensors + 1024:
        raise InvalidFile(
            f"{c.source} describes {count} tensors ({c.n_layer} layers), the checkpoint holds {n_tensors}",
            "the config does not describe this checkpoint",
        )
    shape = _shapes(c)
    rows = c.geometry.qkv_sizes
    pairs: list[Pair] = []
    for i in range(c.n_layer):
        lp, hp = f"transformer.h.{i}.", f"model.layers.{i}."
        for lit, hf, kind in layout.layer:
            if isinstance(hf, tuple):
                kind_of = lit.rsplit(".", 1)[1]  # weight / bias
                pairs.append(Pair(lp + lit, tuple(f"{hp}{m}.{kind_of}" for m in hf), shape[kind], rows))
            else:
                pairs.append(Pair(lp + lit, (hp + hf,), shape[kind]))
        for e in range(experts):
            for lit, hf, kind in layout.expert:
                pairs.append(
                    Pair(f"{lp}mlp.experts.{e}.{lit}", (f"{hp}{layout.expert_prefix}{e}.{hf}",), shape[kind])
                )
    pairs.append(Pair("transformer.ln_f.weight", ("model.norm.weight",), (c.n_embd,)))
    return pairs


def _names(names: Sequence[str], k: int = 3) -> str:
    more = f" (+{len(names) - k} more)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def check_tensors(
    tensors: Mapping[str, TensorInfo],
    expected: Mapping[str, tuple[int, ...]],
    *,
    side: str,
    what: str,
    optional: Mapping[str, tuple[int, ...]] | None = None,
    ignore: Callable[[str], bool] = lambda n: False,
) -> None:
    """Every tensor expected is present with its shape; every tensor present is expected (or ``optional``).

    LoRA and adapter tensors get their own message (merge first), as LitGPT's ``check_conversion_supported``.
    """
    optional = optional or {}
    extra = [n for n in tensors if n not in expected and n not in optional and not ignore(n)]
    lora = [n for n in extra if "lora_" in n]
    if lora:
        raise Unsupported(
            f"{len(lora)} LoRA tensor(s) in the checkpoint (e.g. {lora[0]!r}): a full-model conversion needs merged weights",
            "merge the LoRA into the base first (`ckpt-tool merge`), then convert the merged model",
        )
    adapter = [n for n in extra if "adapter" in n or "gating_factor" in n]
    if adapter:
        raise Unsupported(
            f"{len(adapter)} adapter tensor(s) in the checkpoint (e.g. {adapter[0]!r}): adapter models do not convert",
            "merge adapter v2 weights first; adapter v1 cannot be expressed as plain weights",
        )
    missing = [n for n in expected if n not in tensors]
    bad = [
        f"{n}: shape {list(tensors[n].shape)}, the config gives {list(want)}"
        for n, want in [*expected.items(), *optional.items()]
        if n in tensors and tuple(tensors[n].shape) != tuple(want)
    ]
    if not (extra or missing or bad):
        return
    lines = [f"the {side} checkpoint does not match the {what} its config describes"]
    if missing:
        lines.append(f"  {len(missing)} missing: {_names(missing)}")
    if extra:
        lines.append(f"  {len(extra)} not part of that model: {_names(extra)}")
    lines += [f"  {b}" for b in bad[:3]] + (
        [f"  (+{len(bad) - 3} more shape mismatches)"] if len(bad) > 3 else []
    )
    raise InvalidFile(
        "\n".join(lines),
        "the config does not describe these weights (or they are incomplete); nothing was converted",
    )


# --- compute functions (torch imported lazily; inputs never modified) ----------------------------------


def _split(rows: tuple[int, ...], tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
    """LitGPT ``copy_weights_*``: ``param.split((n_head·hs, n_query_groups·hs, n_query_groups·hs))`` (views)."""
    (t,) = tensors
    return list(t.split(rows))


def _cat(tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
    """LitGPT ``convert_hf_checkpoint``: ``torch.cat((q, k, v))``."""
    import torch

    return [torch.cat(tuple(tensors))]


def _same(a: torch.Tensor, b: torch.Tensor, what: str, hint: str) -> None:
    import torch

    if not torch.equal(a, b):
        raise Refused(what, hint)


def _tied_to_hf(tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
    """Tied output: the embedding alone, after checking LitGPT's separate ``lm_head`` really equals it."""
    wte, head = tensors
    _same(
        wte, head,
        "lm_head.weight differs from transformer.wte.weight, but the converted model ties them",
        "convert with an untied head (tie_word_embeddings false): a fine-tune trained them apart",
    )  # fmt: skip
    return [wte]


def _tied_to_lit(tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
    """config.json ties the head, yet the file holds one: LitGPT takes the file's, transformers the embedding's."""
    embed, head = tensors
    _same(
        embed, head,
        "config.json ties the embeddings, but lm_head.weight in the file differs from model.embed_tokens.weight "
        "(transformers would use the embeddings, LitGPT's converter the stored head)",
        "fix tie_word_embeddings in config.json to say which head is meant",
    )  # fmt: skip
    return [embed, head]


def _discard(tensors: Sequence[torch.Tensor], load: Load) -> list[torch.Tensor]:
    return []


# --- steps --------------------------------------------------------------------------------------------


def lit_to_hf_steps(
    c: LitModel, v: Variant, tensors: Mapping[str, TensorInfo], src: str, sink: str, tie: bool
) -> list[Step]:
    """LitGPT → transformers, as LitGPT's ``copy_weights_*`` (renames, q/k/v row split; dtypes kept).

    ``tie``: write no ``lm_head.weight`` (transformers ties it to the embeddings); the step then checks that
    LitGPT's ``lm_head`` equals ``wte`` (LitGPT always stores both) and refuses otherwise, where LitGPT's
    Gemma converters drop the head unseen.
    """
    pairs = table(c, v.layout, len(tensors))
    emb = (c.vocab, c.n_embd)
    expected = {WTE[0]: emb, **{p.lit: p.shape for p in pairs}, LM_HEAD: emb}
    check_tensors(tensors, expected, side="LitGPT", what=f"{v.arch} model")
    steps: list[Step] = []
    wte = tensors[WTE[0]]
    if tie:
        if tensors[LM_HEAD].dtype != wte.dtype:
            raise Refused(
                f"lm_head.weight is {tensors[LM_HEAD].dtype}, transformer.wte.weight {wte.dtype}: they cannot be tied"
            )
        steps.append(
            Step(
                (Out(sink, WTE[1], wte.dtype, emb),),
                (Read(src, WTE[0]), Read(src, LM_HEAD)),
                _tied_to_hf,
                "tied embeddings (lm_head checked equal)",
            )
        )
    else:
        steps.append(copy_step(src, WTE[0], sink, WTE[1], wte.dtype, emb))
    for p in pairs:
        dt = tensors[p.lit].dtype
        if len(p.hf) == 1:
            steps.append(copy_step(src, p.lit, sink, p.hf[0], dt, p.shape))
        else:
            outs = tuple(Out(sink, n, dt, p.hf_shape(i)) for i, n in enumerate(p.hf))
            steps.append(
                Step(outs, (Read(src, p.lit),), partial(_split, p.rows), "fused qkv split into q/k/v")
            )
    if not tie:
        steps.append(copy_step(src, LM_HEAD, sink, LM_HEAD, tensors[LM_HEAD].dtype, emb))
    return steps


def hf_to_lit_steps(
    c: LitModel, v: Variant, tensors: Mapping[str, TensorInfo], src: str, sink: str, tied: bool
) -> list[Step]:
    """transformers → LitGPT, as LitGPT's ``convert_hf_checkpoint`` (renames, q/k/v concatenated; dtypes kept).

    A tied model without ``lm_head.weight`` gets LitGPT's head copied from the embeddings (as LitGPT does);
    an untied one must have it. Old ``rotary_emb.inv_freq`` buffers are read and dropped by an explicit
    step (LitGPT drops them too; they are recomputed from ``rope_theta``).
    """
    pairs = table(c, v.layout, len(tensors))
    emb = (c.vocab, c.n_embd)
    expected: dict[str, tuple[int, ...]] = {WTE[1]: emb}
    for p in pairs:
        for i, n in enumerate(p.hf):
            expected[n] = p.hf_shape(i)
    optional = {LM_HEAD: emb} if tied else {}
    if not tied:
        expected[LM_HEAD] = emb
    check_tensors(
        tensors,
        expected,
        side="Hugging Face",
        what=f"{v.arch} model",
        optional=optional,
        ignore=_INV_FREQ.fullmatch,
    )
    steps: list[Step] = []
    embed = tensors[WTE[1]]
    if tied and LM_HEAD in tensors:
        if tensors[LM_HEAD].dtype != embed.dtype:
            raise InvalidFile(
                f"lm_head.weight is {tensors[LM_HEAD].dtype}, model.embed_tokens.weight {embed.dtype}, yet config.json ties them"
            )
        outs = (Out(sink, WTE[0], embed.dtype, emb), Out(sink, LM_HEAD, embed.dtype, emb))
        steps.append(
            Step(
                outs,
                (Read(src, WTE[1]), Read(src, LM_HEAD)),
                _tied_to_lit,
                "tied head stored too (checked equal)",
            )
        )
    else:
        steps.append(copy_step(src, WTE[1], sink, WTE[0], embed.dtype, emb))
        if tied:
            steps.append(
                copy_step(
                    src, WTE[1], sink, LM_HEAD, embed.dtype, emb, "tied: LitGPT's lm_head from the embeddings"
                )
            )
    for p in pairs:
        if len(p.hf) == 1:
            steps.append(copy_step(src, p.hf[0], sink, p.lit, tensors[p.hf[0]].dtype, p.shape))
            continue
        dts = {tensors[n].dtype for n in p.hf}
        if len(dts) != 1:
            raise InvalidFile(
                f"{', '.join(p.hf)} have different dtypes ({', '.join(sorted(dts))}): they cannot be fused"
            )
        steps.append(
            Step(
                (Out(sink, p.lit, dts.pop(), p.shape),),
                tuple(Read(src, n) for n in p.hf),
                _cat,
                "q/k/v fused into qkv",
            )
        )
    if not tied:
        steps.append(copy_step(src, LM_HEAD, sink, LM_HEAD, tensors[LM_HEAD].dtype, emb))
    for n in tensors:
        if _INV_FREQ.fullmatch(n):
            steps.append(
                Step(
                    (),
                    (Read(src, n),),
                    _discard,
                    f"{n}: rotary buffer, recomputed from rope_theta (LitGPT drops it too)",
                )
            )
    return steps


# --- the Family implementation shared by the LLaMA-like modules -----------------------------------------


class HubFamily:
    """``Family`` for architectures described by a ``Variant`` table; subclasses pick the variant and map configs.

    Subclasses implement ``variant_for_lit`` (which also refuses LitGPT features the target cannot express),
    ``hf_model_types`` and the two config mappings.
    """

    name = ""
    variants: Mapping[str, Variant] = {}

    def variant_for_lit(self, c: LitModel) -> Variant:
        raise NotImplementedError

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        return isinstance(hf, Mapping) and hf.get("model_type") in self.variants

    def variant_for_hf(self, hf: Mapping[str, Any]) -> Variant:
        mt = hf.get("model_type") if isinstance(hf, Mapping) else None
        if mt not in self.variants:
            raise Unsupported(f"config.json: model_type {mt!r:.40} is not a {self.name} model")
        return self.variants[mt]

    @staticmethod
    def resolve_tie(v: Variant, tie: bool | None, base: Mapping[str, Any] | None = None) -> bool:
        """Tie the head when asked; by default as the original config.json (``base``) did, else as transformers'
        default for the model type. ``hf_config`` and ``to_hf_steps`` must be given the same answer."""
        if tie is not None:
            return bool(tie)
        if isinstance(base, Mapping) and isinstance(base.get("tie_word_embeddings"), bool):
            return base["tie_word_embeddings"]
        return v.tied

    def to_hf_steps(
        self,
        cfg: Mapping[str, Any],
        tensors: Mapping[str, TensorInfo],
        src: str,
        sink: str,
        *,
        tie: bool | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> list[Step]:
        """``tie`` / ``base`` as given to ``hf_config`` (they decide whether ``lm_head.weight`` is written)."""
        c = LitModel(cfg)
        v = self.variant_for_lit(c)
        return lit_to_hf_steps(c, v, tensors, src, sink, self.resolve_tie(v, tie, base))

    def to_lit_steps(
        self,
        cfg: Mapping[str, Any],
        hf: Mapping[str, Any],
        tensors: Mapping[str, TensorInfo],
        src: str,
        sink: str,
    ) -> list[Step]:
        c = LitModel(cfg)
        v_lit = self.variant_for_lit(c)
        v = self.variant_for_hf(hf)
        if v_lit.layout is not v.layout:
            raise Refused(
                f"model_config.yaml describes a {v_lit.arch} model, config.json a {v.arch}",
                "use the model_config.yaml made from this config.json",
            )
        tied = HfView(hf, {"tie_word_embeddings": v.tied}).flag("tie_word_embeddings")
        return hf_to_lit_steps(c, v, tensors, src, sink, tied)

    def check_lit_config(self, out: dict[str, Any]) -> dict[str, Any]:
        """Self-check of ``lit_config``: the result must map back to the same family (a plugin bug otherwise)."""
        c = LitModel(out, "converted model_config.yaml")
        if c.route != hf_route(c.name, c.mlp):
            raise Unsupported(
                f"converted LitGPT name {c.name!r} routes differently in LitGPT's two converters (plugin bug)"
            )
        self.variant_for_lit(c)
        return out
