"""Gemma, Gemma-2 and Gemma-3 (text): LitGPT's ``copy_weights_llama`` (Gemma 1), ``copy_weights_gemma_2`` / ``_3``.

Conventions that make these models Gemma in LitGPT: ``"Gemma" in name`` (every RMSNorm computes with
``1 + weight``, the same stored values as transformers' Gemma norms), ``GemmaMLP`` (GELU-gated; ``tanh``
approximation ↔ ``gelu_pytorch_tanh``), ``scale_embeddings`` (× √n_embd). Gemma-2 adds post-attention and
post-MLP norms (``norm_2`` is transformers' ``pre_feedforward_layernorm``), ``attention_scores_scalar`` ↔
``query_pre_attn_scalar``, logit soft-capping and per-layer sliding windows; Gemma-3 adds q/k norms and a
second rope base for sliding layers (``rope_local_base_freq``, ``rope_indices``).

The variant is read from the structure (post norms, q/k norms), not from the name prefix: LitGPT routes by
``name.startswith("Gemma-2")``, so its own Gemma 1 ``Gemma-2b`` goes through the Gemma-2 converter and gets
the wrong norm names; here it converts as Gemma 1 (a test shows the difference).

The head: LitGPT keeps ``lm_head`` as its own tensor, LitGPT's Gemma converters never write it (tied).
Here it is tied by default too, but only after checking it equals the embeddings; ``tie=False`` writes it
(``tie_word_embeddings: false``) for fine-tunes that trained it apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool.errors import Unsupported
from ckpt_tool_lit.hub.config_json import read_rope
from ckpt_tool_lit.hub.family import HubFamily, Variant
from ckpt_tool_lit.hub.llama import DENSE, QK_NORM, RULES, _gemma_like, lit_llama, llama_json
from ckpt_tool_lit.hub.model_config import ANY, LitModel, cfg_route, lit_name, same_route
from ckpt_tool_lit.hub.tensors import QKV, Layout, T

GEMMA2 = Layout(
    (
        T("norm_1.weight", "input_layernorm.weight"),
        T("attn.qkv.weight", QKV),
        T("attn.proj.weight", "self_attn.o_proj.weight"),
        T("post_attention_norm.weight", "post_attention_layernorm.weight"),
        T("norm_2.weight", "pre_feedforward_layernorm.weight"),
        T("mlp.fc_1.weight", "mlp.gate_proj.weight"),
        T("mlp.fc_2.weight", "mlp.up_proj.weight"),
        T("mlp.proj.weight", "mlp.down_proj.weight"),
        T("post_mlp_norm.weight", "post_feedforward_layernorm.weight"),
    )
)
GEMMA3 = Layout(GEMMA2.layer[:3] + QK_NORM + GEMMA2.layer[3:])

VARIANTS = {
    "gemma": Variant("gemma", "GemmaForCausalLM", DENSE, tied=True),
    "gemma2": Variant("gemma2", "Gemma2ForCausalLM", GEMMA2, tied=True),
    "gemma3_text": Variant("gemma3_text", "Gemma3ForCausalLM", GEMMA3, tied=True),
}
#: model_type "gemma3" is Gemma3ForConditionalGeneration (text + vision): claimed so the refusal says why.
MULTIMODAL = "gemma3"
PREFIX = {"gemma": "Gemma", "gemma2": "Gemma-2", "gemma3_text": "Gemma-3"}
ROUTE = {"gemma": "llama", "gemma2": "gemma_2", "gemma3_text": "gemma_3"}
ACT = {"tanh": "gelu_pytorch_tanh", "none": "gelu"}

_COMMON = {
    "head_dim": 256, "rms_norm_eps": 1e-6, "attention_bias": False, "tie_word_embeddings": True,
}  # fmt: skip
#: transformers' defaults (5.3 config classes) for keys a config.json may leave out; pinned by a test.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": {**_COMMON, "rope_theta": 10000.0, "max_position_embeddings": 8192, "hidden_act": "gelu_pytorch_tanh"},
    "gemma2": {
        **_COMMON, "rope_theta": 10000.0, "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
    "gemma3_text": {
        **_COMMON, "rope_theta": 1e6, "rope_local_base_freq": 10000.0, "max_position_embeddings": 131072,
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "sliding_window_pattern": 6, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    },
}  # fmt: skip


def _structure(c: LitModel) -> str:
    post = c.v["post_attention_norm"] or c.v["post_mlp_norm"]
    return "gemma3_text" if c.v["norm_qk"] else "gemma2" if post else "gemma"


def _pattern(layers: list[int]) -> int | None:
    """transformers 4's ``sliding_window_pattern`` p (layer i slides iff (i+1) % p) matching ``layers``, if any."""
    if all(layers):
        return len(layers) + 1
    for p in range(1, min(len(layers), 64) + 1):
        if all(bool((i + 1) % p) == bool(s) for i, s in enumerate(layers)):
            return p
    return None


class GemmaFamily(HubFamily):
    name = "gemma"
    variants = VARIANTS
    hf_defaults = HF_DEFAULTS
    gemma_norms = True

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        route, name, mlp = cfg_route(cfg)
        return route in ("gemma_2", "gemma_3") or route == "llama" and _gemma_like(name, mlp)

    def variant_for_hf(self, hf: Mapping[str, Any]) -> Variant:
        if isinstance(hf, Mapping) and hf.get("model_type") == MULTIMODAL:
            raise Unsupported(
                "config.json: model_type 'gemma3' is Gemma-3 with its vision tower (Gemma3ForConditionalGeneration); "
                "only the text model (Gemma3ForCausalLM, model_type 'gemma3_text') converts",
                "LitGPT keeps only the text weights of these checkpoints; extract the language model first",
            )
        return super().variant_for_hf(hf)

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        return super().matches_hf(hf) or isinstance(hf, Mapping) and hf.get("model_type") == MULTIMODAL

    def variant_for_lit(self, c: LitModel) -> Variant:
        if "Gemma" not in c.name or c.mlp != "GemmaMLP" or c.route not in ("llama", "gemma_2", "gemma_3"):
            raise Unsupported(
                f"{c.source}: {c.name!r} ({c.mlp}) is not a Gemma model for LitGPT "
                "(it needs 'Gemma' in the name, for the 1 + weight norms, and mlp_class_name GemmaMLP)"
            )
        v = VARIANTS[_structure(c)]
        rules: dict[str, Any] = {
            **RULES, "mlp_class_name": "GemmaMLP", "scale_embeddings": True, "attention_scores_scalar": ANY,
        }  # fmt: skip
        if v.model_type != "gemma":
            rules.update(
                post_attention_norm=True, post_mlp_norm=True, attention_logit_softcapping=ANY,
                final_logit_softcapping=ANY, sliding_window_size=ANY, sliding_window_indices=ANY,
            )  # fmt: skip
        if v.model_type == "gemma3_text":
            rules.update(norm_qk=True, norm_qk_type="default", rope_local_base_freq=ANY, rope_indices=ANY)
        c.require(v.arch, rules)
        if c.v["gelu_approximate"] not in ACT:
            raise Unsupported(f"{c.source}: gelu_approximate = {c.v['gelu_approximate']!r:.20} (only 'tanh' and 'none' exist)")
        scalar = c.v["attention_scores_scalar"]
        if v.model_type == "gemma" and scalar not in (None, c.geometry.head_size):
            raise Unsupported(f"{c.source}: attention_scores_scalar {scalar!r:.20}: Gemma 1 scales by the head size")
        if scalar is not None:
            c.int("attention_scores_scalar")
        for key in ("attention_logit_softcapping", "final_logit_softcapping", "rope_local_base_freq"):
            c.opt_num(key)
        scaling = c.rope_scaling()
        if v.model_type == "gemma3_text":
            types = self._layer_types(c)
            if c.v["rope_local_base_freq"] is not None and c.local_rope_layers != types:
                raise Unsupported(
                    f"{c.source}: rope_indices differ from sliding_window_indices; Gemma-3 uses the local rope base "
                    "exactly on sliding layers"
                )
            if c.v["rope_local_base_freq"] is None and scaling is not None and any(types):
                raise Unsupported(f"{c.source}: rope_adjustments apply to every layer, Gemma-3 scales only the global ones")
        return v

    @staticmethod
    def _layer_types(c: LitModel) -> list[int]:
        """Sliding layers; without a window, Gemma-3's local-rope layers (transformers types layers either way)."""
        return c.sliding_layers if c.sliding_window is not None else c.local_rope_layers

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        act = ACT[c.v["gelu_approximate"]]
        out = {**llama_json(c), "hidden_activation": act, "attention_bias": False}
        if v.model_type == "gemma":
            out["hidden_act"] = act  # transformers 5 reads hidden_act, 4 hidden_activation
            return out
        types = self._layer_types(c) if v.model_type == "gemma3_text" else c.sliding_layers
        out.update(
            query_pre_attn_scalar=c.v["attention_scores_scalar"] or c.geometry.head_size,
            attn_logit_softcapping=c.v["attention_logit_softcapping"],
            final_logit_softcapping=c.v["final_logit_softcapping"],
            sliding_window=c.sliding_window,
            layer_types=["sliding_attention" if s else "full_attention" for s in types],
        )
        if v.model_type == "gemma3_text":
            local = c.v["rope_local_base_freq"]
            out["rope_local_base_freq"] = float(c.rope_base if local is None else local)
            pattern = _pattern(types)
            if pattern is not None:
                out["sliding_window_pattern"] = pattern  # transformers < 4.53 reads only this
        return out

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = self.view(hf, v)
        act = h.get("hidden_activation") or h.get("hidden_act")
        approx = {a: k for k, a in ACT.items()}.get(act)
        if approx is None:
            raise h.unsupported(f"activation {act!r:.40}", "LitGPT's Gemma MLP knows gelu_pytorch_tanh and gelu")
        h.refuse("attention_bias", [False], "LitGPT's Gemma has no attention biases")
        h.refuse("use_bidirectional_attention", [None, False], "LitGPT's models are causal")
        route, prefix = ROUTE[v.model_type], PREFIX[v.model_type]
        name, hfc = lit_name(hf, prefix, lambda n: same_route(n, "GemmaMLP", route), prefix, gemma=True)
        layers = "full_attention" if v.model_type == "gemma3_text" else None
        out = lit_llama(h, name, hfc, layers, mlp_class_name="GemmaMLP", gelu_approximate=approx, scale_embeddings=True)
        if v.model_type == "gemma":
            return self.check_lit_config(out)
        if v.model_type == "gemma2":
            types = h.layer_types(lambda i: i % 2 == 0)
        else:
            pattern = h.raw.get("sliding_window_pattern", h.raw.get("_sliding_window_pattern", 6))
            if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
                raise h.unsupported(f"sliding_window_pattern {pattern!r:.20}", "it is not a positive integer")
            types = h.layer_types(lambda i: bool((i + 1) % pattern))
        window = h.opt_int("sliding_window")
        slides = window is not None and any(types)
        out.update(
            post_attention_norm=True,
            post_mlp_norm=True,
            attention_scores_scalar=h.int("query_pre_attn_scalar"),
            attention_logit_softcapping=h.opt_num("attn_logit_softcapping"),
            final_logit_softcapping=h.opt_num("final_logit_softcapping"),
            sliding_window_size=window if slides else None,
            sliding_window_indices=types if slides else None,
        )
        if v.model_type == "gemma3_text":
            local = read_rope(h, "sliding_attention")
            if local.kind != "default":
                raise h.unsupported(
                    f"rope scaling {local.kind!r:.20} on sliding layers", "LitGPT scales the global rope only"
                )
            out.update(norm_qk=True, rope_local_base_freq=float(local.theta), rope_indices=types)
        return self.check_lit_config(out)


FAMILY = GemmaFamily()
