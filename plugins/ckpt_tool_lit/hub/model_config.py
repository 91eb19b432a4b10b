"""A LitGPT ``model_config.yaml`` as LitGPT 0.5.13 reads it, for every hub family: coded once.

* ``LIT_DEFAULTS``: ``litgpt.Config``'s fields and defaults (a test pins them against the installed litgpt).
* ``LitModel``: a config over those defaults, every value type-checked, the derived sizes computed as
  ``Config.__post_init__`` computes them (head size, query groups, padded vocabulary, MLP size, per-layer
  sliding / local-rope flags, ``rope_n_elem``), ``base_table``: the names and shapes of the state dict
  ``litgpt.GPT`` builds from it (for every LitGPT config, convertible or not; the families' layouts take
  their LitGPT shapes from it), and ``require``: the one check that refuses any setting a transformers
  architecture cannot express. LitGPT itself needs a *known* model name to convert; this does not, so any
  size converts.
* ``lit_route`` / ``hf_route``: LitGPT's converter dispatch (by name, then MLP class). The name decides
  behaviour in LitGPT (which ``copy_weights_*`` runs, Gemma's ``1 + weight`` norms, OLMo's affine-free
  LayerNorm), so ``lit_name`` only gives a converted model a name that keeps LitGPT on the same path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.limits import MAX_CONFIG_TENSORS, MAX_DIM, MAX_EXPERTS, MAX_LAYERS
from ckpt_tool_lit.config import MODEL_CONFIG
from ckpt_tool_lit.geometry import Geometry
from ckpt_tool_lit.keys import MLP_CLASSES, MLP_LINEARS, MOE

Shape = tuple[int, ...]

#: ``litgpt.Config`` fields and their defaults (litgpt 0.5.13). A config that leaves a field out means
#: what it means to LitGPT.
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

#: The settings ``base_table`` reads (and ``name``, for OLMo's norms): configs that agree on them have one table.
TABLE_DEFAULTS = {k: LIT_DEFAULTS[k] for k in (
    "n_layer", "n_embd", "n_head", "vocab_size", "padding_multiple", "padded_vocab_size", "head_size", "n_query_groups",
    "intermediate_size", "moe_intermediate_size", "norm_class_name", "bias", "attn_bias", "lm_head_bias", "norm_qk",
    "norm_qk_type", "post_attention_norm", "post_mlp_norm", "norm_1", "norm_2", "shared_attention_norm",
    "mlp_class_name", "n_expert", "n_shared_expert", "n_expert_groups", "first_k_dense_replace", "latent_attention",
)}  # fmt: skip

#: Settings that size the model (every family maps them) or never change the weights or the computation.
SIZES = (
    "name", "hf_config", "block_size", "n_layer", "n_embd", "vocab_size", "padding_multiple",
    "padded_vocab_size", "n_head", "head_size", "n_query_groups", "intermediate_size", "norm_eps", "rope_base",
)  # fmt: skip
_STR = ("name", "norm_class_name", "mlp_class_name", "gelu_approximate", "norm_qk_type")
_BOOL = (
    "norm_qk", "post_attention_norm", "post_mlp_norm", "parallel_residual", "shared_attention_norm", "attn_bias",
    "rope_interleave", "bias", "norm_topk_prob", "scale_embeddings", "lm_head_bias", "norm_1", "norm_2",
)  # fmt: skip

#: ``require`` rule: the family maps (or may ignore) whatever value this setting has.
ANY = object()


@dataclass(frozen=True)
class Need:
    """``require`` rule: the setting must be one of ``allowed``; ``why`` says why in the refusal."""

    allowed: tuple[Any, ...]
    why: str = ""


def need(*allowed: Any, why: str = "") -> Need:
    return Need(allowed, why)


# --- LitGPT's converter dispatch ----------------------------------------------------------------------


def lit_route(name: str, mlp_class_name: str, gemma_any_case: bool = False) -> str:
    """The ``copy_weights_*`` LitGPT's ``convert_lit_checkpoint`` picks (0.5.13): by name first, then MLP class.

    ``convert_hf_checkpoint`` tests the same names but Gemma-2/3 in any case (``gemma_any_case``: ``hf_route``).
    """
    low = name.lower()
    gemma = low if gemma_any_case else name
    if "falcon" in name:
        return "falcon"
    for prefix, route in (("Gemma-2", "gemma_2"), ("Gemma-3", "gemma_3")):
        if gemma.startswith(prefix.lower() if gemma_any_case else prefix):
            return route
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
    """The ``copy_weights_*`` ``convert_hf_checkpoint`` picks."""
    return lit_route(name, mlp_class_name, gemma_any_case=True)


def cfg_route(cfg: Any) -> tuple[str, str, str]:
    """(route, name, mlp_class_name) of a raw config mapping, never raising (``matches_lit`` answers any input)."""
    if not isinstance(cfg, Mapping):
        return "", "", ""
    name, mlp = cfg.get("name"), cfg.get("mlp_class_name", LIT_DEFAULTS["mlp_class_name"])
    name = name if isinstance(name, str) else ""
    mlp = mlp if isinstance(mlp, str) else ""
    return lit_route(name, mlp), name, mlp


def same_route(name: str, mlp_class_name: str, route: str) -> bool:
    """Both of LitGPT's converters send ``name`` down ``route``."""
    return lit_route(name, mlp_class_name) == route == hf_route(name, mlp_class_name)


def lit_name(
    hf: Mapping[str, Any], fallback: str, fits: Callable[[str], bool], prefix: str = "", gemma: bool = False
) -> tuple[str, dict[str, str]]:
    """A LitGPT ``name`` (and ``hf_config``) for a model made from ``config.json``.

    The repository's name (``_name_or_path``) when LitGPT would treat it as this family and layout
    (``fits``), else that name behind ``prefix``, else ``fallback``. A name whose norms LitGPT would change
    ("Gemma" in a non-Gemma model, "OLMo") is never used.
    """
    raw = hf.get("_name_or_path")
    org, base = "", ""
    if isinstance(raw, str) and 0 < len(raw) <= 200 and raw.isprintable():
        parts = raw.rstrip("/").split("/")
        base, org = parts[-1], (parts[-2] if len(parts) >= 2 else "")
    candidates = []
    if base:
        if prefix and base.lower().startswith(prefix.lower()):
            candidates.append(prefix + base[len(prefix) :])
        candidates.append(base)
        if prefix:
            candidates.append(f"{prefix}-{base}")
    ok = [n for n in candidates if ("Gemma" in n) == gemma and "OLMo" not in n and fits(n)]
    return (ok[0] if ok else fallback), ({"org": org, "name": base} if org and base else {})


# --- the config ---------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _same(a: Any, b: Any) -> bool:
    """Equal and of one kind (numbers compare across int/float; ``True`` is not ``1``)."""
    return a == b and (type(a) is type(b) or (_is_num(a) and _is_num(b)))


def whole(x: float) -> int | float:
    """``500000.0`` → ``500000``: LitGPT writes integral rope bases as ints (same value, same rotations)."""
    return int(x) if float(x).is_integer() else x


class LitModel:
    """A LitGPT model config with LitGPT's defaults and derived sizes applied, every value checked.

    ``v`` holds every setting (derived ones resolved as ``Config.__post_init__`` does, plus
    ``rope_n_elem``); the attributes are the checked sizes the families use.

    Raises:
        InvalidFile: a value of the wrong type or out of range (past a limit of ``ckpt_tool.limits``), or
            inconsistent head geometry, naming the setting and ``source``.
        Unsupported: a setting LitGPT 0.5.13 does not have (a legacy ``_mlp_class``, a newer field).
    """

    def __init__(self, cfg: Mapping[str, Any], source: str = MODEL_CONFIG) -> None:
        if not isinstance(cfg, Mapping):
            raise InvalidFile(f"{source}: expected a mapping of settings, found {type(cfg).__name__}")
        self.source = source
        unknown = sorted(str(k) for k in cfg if k not in LIT_DEFAULTS)
        if unknown:
            raise Unsupported(
                f"{source}: unknown LitGPT config field(s) {', '.join(unknown[:5])} (not LitGPT 0.5.13 Config fields)",
                "legacy LitGPT configs are upgraded by `ckpt-tool migrate`; a newer LitGPT's field may change "
                "the model, so it is not ignored",
            )
        v = self.v = {**LIT_DEFAULTS, **cfg}
        for key in _STR:
            if not isinstance(v[key], str):
                raise InvalidFile(f"{source}: {key} = {v[key]!r:.40} is not a string")
        for key in _BOOL:
            if not isinstance(v[key], bool):
                raise InvalidFile(f"{source}: {key} = {v[key]!r:.40} is not true or false")
        if not v["name"] and isinstance(v["hf_config"], Mapping) and isinstance(v["hf_config"].get("name"), str):
            v["name"] = v["hf_config"]["name"]  # as Config.__post_init__
        self.name, self.mlp, self.norm = v["name"], v["mlp_class_name"], v["norm_class_name"]
        self.route = lit_route(self.name, self.mlp)
        self.n_layer = self.int("n_layer", MAX_LAYERS)
        self.n_embd = self.int("n_embd")
        self.block_size = self.int("block_size")
        self.geometry = g = Geometry.from_config(v, source)
        if v["head_size"] is None and self.n_embd % g.n_head:
            raise InvalidFile(f"{source}: n_embd {self.n_embd} is not a multiple of n_head {g.n_head}")
        vocab = self.int("vocab_size")
        if v["padded_vocab_size"] is None:
            m = self.int("padding_multiple")
            self.vocab = vocab + (-vocab % m)
        else:
            self.vocab = self.int("padded_vocab_size")
            vocab = min(vocab, self.vocab)
        if v["intermediate_size"] is None:
            if self.mlp == "LLaMAMLP":
                raise InvalidFile(f"{source}: intermediate_size is missing (LitGPT needs it for {self.mlp})")
            self.intermediate = 4 * self.n_embd
        else:
            self.intermediate = self.int("intermediate_size")
        self.n_expert = self.int("n_expert", MAX_EXPERTS, zero_ok=True)
        if self.mlp == MOE and not self.n_expert:
            raise InvalidFile(f"{source}: n_expert is 0 but mlp_class_name is {self.mlp}")
        self.int("n_expert_per_token", MAX_EXPERTS, zero_ok=True)
        moe = v["moe_intermediate_size"]
        self.expert_intermediate = self.intermediate if moe is None else self.int("moe_intermediate_size")
        for key, most in (
            ("n_shared_expert", MAX_EXPERTS), ("n_expert_groups", MAX_EXPERTS), ("first_k_dense_replace", MAX_LAYERS)
        ):  # fmt: skip
            if v[key] is not None:
                self.int(key, most, zero_ok=True)
        self.norm_eps = self.num("norm_eps")
        self.rope_base = self.num("rope_base")
        pct = v["rotary_percentage"]
        if not _is_num(pct) or not 0 <= pct <= 1:
            raise InvalidFile(f"{source}: rotary_percentage = {pct!r:.40} is not a number in [0, 1]")
        self.sliding_window = None if v["sliding_window_size"] is None else self.int("sliding_window_size")
        self.sliding_layers = self.indicator("sliding_window_indices", self.sliding_window is not None)
        self.local_rope_layers = self.indicator("rope_indices", v["rope_local_base_freq"] is not None)
        v.update(
            name=self.name, head_size=g.head_size, n_query_groups=g.n_query_groups, vocab_size=vocab,
            padded_vocab_size=self.vocab, intermediate_size=self.intermediate,
            rope_n_elem=int(pct * g.head_size),
        )  # fmt: skip

    def __getitem__(self, key: str) -> Any:
        return self.v[key]

    # -- typed accessors ---------------------------------------------------------------------------

    def int(self, key: str, maximum: int = MAX_DIM, zero_ok: bool = False) -> int:
        v = self.v[key]
        if not _is_int(v) or v < (0 if zero_ok else 1):
            raise InvalidFile(
                f"{self.source}: {key} = {v!r:.40} is not a {'non-negative' if zero_ok else 'positive'} integer",
                "fix model_config.yaml",
            )
        if v > maximum:
            raise InvalidFile(f"{self.source}: {key} = {v} is past the limit of {maximum}")
        return v

    def num(self, key: str) -> float:
        v = self.v[key]
        if not _is_num(v) or v <= 0:
            raise InvalidFile(f"{self.source}: {key} = {v!r:.40} is not a positive number", "fix model_config.yaml")
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
        if not isinstance(v, list) or len(v) < self.n_layer or any(x not in (0, 1) or isinstance(x, float) for x in v):
            raise InvalidFile(f"{self.source}: {key} must be a list of {self.n_layer} zeros and ones")
        return [int(x) for x in v[: self.n_layer]]

    # -- the tensors LitGPT builds ------------------------------------------------------------------

    def base_table(self) -> dict[str, Shape]:
        """Names and shapes of ``litgpt.GPT(Config(**cfg)).state_dict()`` (0.5.13), in its order, without litgpt
        or torch (a test compares it with ``litgpt.GPT`` for every registry config).

        Raises:
            InvalidFile: more than ``MAX_CONFIG_TENSORS`` tensors.
            Unsupported: a norm, MLP or attention LitGPT 0.5.13 does not build.
        """
        per_layer = len(self.layer_tensors(self.n_layer - 1))  # the largest block (dense replacements come first)
        if self.n_layer * per_layer > MAX_CONFIG_TENSORS:
            raise InvalidFile(
                f"{self.source}: {self.n_layer} layers × {per_layer} tensors is past the limit of {MAX_CONFIG_TENSORS}"
            )
        outer = self.outer_tensors()
        head = {k: s for k, s in outer.items() if not k.startswith("transformer.ln_f.")}
        blocks = {k: s for i in range(self.n_layer) for k, s in self.layer_tensors(i).items()}
        return {**head, **blocks, **outer}  # lm_head, wte, the blocks, then ln_f

    def outer_tensors(self) -> dict[str, Shape]:
        """The tensors outside the blocks: ``lm_head``, ``transformer.wte``, ``transformer.ln_f``."""
        out: dict[str, Shape] = {}
        self._linear(out, "lm_head", self.vocab, self.n_embd, self.v["lm_head_bias"])
        out["transformer.wte.weight"] = (self.vocab, self.n_embd)
        self._norm(out, "transformer.ln_f", self.n_embd)
        return out

    def layer_tensors(self, i: int) -> dict[str, Shape]:
        """The tensors of block ``i`` (``litgpt.model.Block``), in module order."""
        v, g, e = self.v, self.geometry, self.n_embd
        if v["latent_attention"] is not None:
            raise Unsupported(f"{self.source}: latent attention (DeepSeek MLA) is not read here")
        if self.mlp not in MLP_CLASSES:
            raise Unsupported(f"{self.source}: mlp_class_name {self.mlp!r:.40} is not a LitGPT MLP class")
        p, (q, kv, _) = f"transformer.h.{i}.", g.qkv_sizes
        out: dict[str, Shape] = {}
        if v["norm_1"]:
            self._norm(out, p + "norm_1", e)
        self._linear(out, p + "attn.qkv", g.qkv_rows, e, v["bias"] or v["attn_bias"])
        if v["norm_qk"]:
            olmo2 = v["norm_qk_type"] == "olmo2"
            self._norm(out, p + "attn.norm_q", q if olmo2 else g.head_size)
            self._norm(out, p + "attn.norm_k", kv if olmo2 else g.head_size)
        self._linear(out, p + "attn.proj", e, q, v["bias"])
        if v["post_attention_norm"]:
            self._norm(out, p + "post_attention_norm", e)
        if v["norm_2"] and not v["shared_attention_norm"]:
            self._norm(out, p + "norm_2", e)
        if self.mlp == MOE and i >= (v["first_k_dense_replace"] or 0):
            out[p + "mlp.gate.weight"] = (self.n_expert, e)
            if v["n_expert_groups"]:
                out[p + "mlp.gate.e_score_correction_bias"] = (self.n_expert,)  # GroupedTopkRouter's buffer
            for x in range(self.n_expert):
                self._mlp(out, f"{p}mlp.experts.{x}.", "LLaMAMLP", self.expert_intermediate)
            if v["n_shared_expert"]:
                self._mlp(out, p + "mlp.shared_experts.", "LLaMAMLP", self.expert_intermediate * v["n_shared_expert"])
        else:
            self._mlp(out, p + "mlp.", "LLaMAMLP" if self.mlp == MOE else self.mlp, self.intermediate)
        if v["post_mlp_norm"]:
            self._norm(out, p + "post_mlp_norm", e)
        return out

    def _norm(self, out: dict[str, Shape], name: str, size: int) -> None:
        """``Config.norm_class``: LayerNorm has a weight and a bias, RMSNorm a weight; a LayerNorm in a model
        whose name contains "OLMo" has neither (``elementwise_affine=False``)."""
        if self.norm not in ("LayerNorm", "RMSNorm"):
            raise Unsupported(f"{self.source}: norm_class_name {self.norm!r:.40} is not a LitGPT norm")
        if self.norm == "LayerNorm" and "OLMo" in self.name:
            return
        out[f"{name}.weight"] = (size,)
        if self.norm == "LayerNorm":
            out[f"{name}.bias"] = (size,)

    @staticmethod
    def _linear(out: dict[str, Shape], name: str, rows: int, cols: int, bias: bool) -> None:
        out[f"{name}.weight"] = (rows, cols)
        if bias:
            out[f"{name}.bias"] = (rows,)

    def _mlp(self, out: dict[str, Shape], prefix: str, mlp: str, size: int) -> None:
        for n in MLP_LINEARS[mlp]:
            rows, cols = (self.n_embd, size) if n == "proj" else (size, self.n_embd)
            self._linear(out, prefix + n, rows, cols, self.v["bias"])

    # -- what the model computes -------------------------------------------------------------------

    def rope_scaling(self) -> dict[str, Any] | None:
        """``config.json``'s ``rope_scaling`` for ``rope_adjustments`` / ``rope_condense_ratio``, read as LitGPT's
        ``GPT.rope_cache`` reads them (llama3 when low/high_freq_factor are present, else linear on ``factor``).

        ``rope_condense_ratio`` r divides positions by r: the same as linear scaling with factor r. YaRN is
        refused: LitGPT and transformers compute its attention factor differently.
        """
        adj, ratio = self.v["rope_adjustments"], self.v["rope_condense_ratio"]
        if not _is_num(ratio) or ratio <= 0:
            raise InvalidFile(f"{self.source}: rope_condense_ratio = {ratio!r:.40} is not a positive number")
        if adj is not None and not isinstance(adj, Mapping):
            raise InvalidFile(f"{self.source}: rope_adjustments is not a mapping")
        adj = adj or {}
        if any(k in adj for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim")):
            raise Unsupported(
                f"{self.source}: YaRN rope_adjustments: LitGPT and transformers compute YaRN's attention factor "
                "differently, so the converted model would not be the same"
            )

        def number(key: str) -> float:
            v = adj.get(key)
            if not _is_num(v) or v <= 0:
                raise InvalidFile(f"{self.source}: rope_adjustments.{key} = {v!r:.40} is not a positive number")
            return v

        scaling: dict[str, Any] | None = None
        if "low_freq_factor" in adj or "high_freq_factor" in adj:
            omax = adj.get("original_max_seq_len")
            if not _is_int(omax) or omax <= 0:
                raise InvalidFile(
                    f"{self.source}: rope_adjustments.original_max_seq_len is missing or not a positive integer"
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
                    f"{self.source}: rope_condense_ratio together with rope_adjustments has no transformers equivalent"
                )
            scaling = {"rope_type": "linear", "factor": float(ratio)}
        return scaling

    def arch(self) -> dict[str, Any]:
        """The settings that decide the weights and the computation, each in one spelling (two configs
        describe the same model when these agree; the rope as its ``config.json`` form)."""
        g, v = self.geometry, self.v
        gelu = v["gelu_approximate"] if self.mlp in ("GptNeoxMLP", "GemmaMLP") else None
        keys = (
            "norm_class_name", "norm_eps", "mlp_class_name", "bias", "attn_bias", "lm_head_bias", "parallel_residual",
            "shared_attention_norm", "rope_n_elem", "rope_base", "sliding_window_size", "norm_qk", "post_attention_norm",
            "post_mlp_norm", "attention_logit_softcapping", "final_logit_softcapping", "scale_embeddings",
            "rope_local_base_freq", "n_expert", "n_expert_per_token",
        )  # fmt: skip
        return {
            "n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": g.n_head, "n_query_groups": g.n_query_groups,
            "head_size": g.head_size, "padded_vocab_size": self.vocab, "intermediate_size": self.intermediate,
            "moe_intermediate_size": self.expert_intermediate if self.n_expert else None,
            **{k: v[k] for k in keys}, "gelu_approximate": gelu, "rope_scaling": self.rope_scaling(),
            "sliding_window_indices": self.sliding_layers, "rope_indices": self.local_rope_layers,
            "attention_scores_scalar": v["attention_scores_scalar"] or g.head_size,
        }  # fmt: skip

    # -- what a transformers architecture can express ----------------------------------------------

    def require(self, arch: str, rules: Mapping[str, Any]) -> None:
        """Refuse any LitGPT setting transformers' ``arch`` cannot express.

        ``rules`` maps a setting (or a derived one, e.g. ``rope_n_elem``) to the value it must have, a
        ``need(...)`` of allowed values with the reason, or ``ANY`` when the family maps (or may ignore)
        whatever it holds; every other setting apart from the sizes must hold LitGPT's default. Why: a
        feature the mapping does not know (parallel residual, partial rotary, biases, a setting a later
        LitGPT adds) would otherwise be converted silently into a different model.
        """
        for key in (*LIT_DEFAULTS, *(k for k in rules if k not in LIT_DEFAULTS)):
            if key in rules:
                rule = rules[key]
            elif key in SIZES:
                continue
            else:
                rule = LIT_DEFAULTS[key]
            if rule is ANY:
                continue
            allowed, why = (rule.allowed, rule.why) if isinstance(rule, Need) else ((rule,), "")
            have = self.v[key]
            if not any(_same(have, a) for a in allowed):
                needs = " or ".join(repr(a) for a in allowed)
                raise Unsupported(
                    f"{self.source}: {key} = {have!r:.60} has no equivalent in transformers' {arch} "
                    f"({why or 'it needs ' + needs})",
                    "this LitGPT model cannot be expressed in that architecture; nothing was converted",
                )

    def require_plain_names(self, arch: str, gemma: bool = False) -> None:
        """Refuse a name that makes LitGPT change its norms (``litgpt.Config.norm_class``) unless the target
        does the same: RMSNorm adds 1 to its weight for names containing "Gemma" (as transformers' Gemma
        does), LayerNorm loses its affine weights for names containing "OLMo"."""
        if (self.norm == "RMSNorm" and ("Gemma" in self.name) != gemma) or (
            self.norm == "LayerNorm" and "OLMo" in self.name
        ):
            raise Unsupported(
                f"{self.source}: name {self.name!r}: LitGPT changes its {self.norm} for names containing 'Gemma' / "
                f"'OLMo' (litgpt.Config.norm_class), which transformers' {arch} does not do",
                "rename the model in model_config.yaml",
            )
