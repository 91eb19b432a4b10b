"""LLaMA 2/3, Mistral, Mixtral: what LitGPT's ``copy_weights_llama`` / ``copy_weights_hf_llama`` convert.

LitGPT sends every model whose name routes nowhere else (falcon, Gemma-2/3, phi, Qwen2.5, OLMo-2, Qwen3) and
whose MLP is ``LLaMAMLP`` / ``GemmaMLP`` / ``LLaMAMoE`` through that code; Gemma 1 (``"Gemma" in name``) is
in ``gemma.py``. The transformers architecture of a LitGPT config: ``LLaMAMoE`` → Mixtral; a sliding window
or a Mistral/Mathstral name → Mistral; else LLaMA (TinyLlama, SmolLM2, Falcon3, CodeLlama... are LLaMA).
LitGPT configs LlamaForCausalLM cannot express (LayerNorm, partial rotary, parallel residual, biases:
OLMo-1, StableLM, StableCode) are refused by setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool.errors import Unsupported
from ckpt_tool_lit.hub.common import (
    ANY,
    MAX_EXPERTS,
    QKV,
    HfView,
    HubFamily,
    Layout,
    LitModel,
    Variant,
    cfg_route,
    gemma_like,
    hf_base_config,
    hf_route,
    lit_base_config,
    lit_name,
    lit_rope_scaling,
    lit_route,
    merge_base,
)

LAYER = (
    ("norm_1.weight", "input_layernorm.weight", "embd"),
    ("attn.qkv.weight", QKV, "qkv"),
    ("attn.proj.weight", "self_attn.o_proj.weight", "o"),
    ("norm_2.weight", "post_attention_layernorm.weight", "embd"),
)
MLP = (
    ("mlp.fc_1.weight", "mlp.gate_proj.weight", "up"),
    ("mlp.fc_2.weight", "mlp.up_proj.weight", "up"),
    ("mlp.proj.weight", "mlp.down_proj.weight", "down"),
)
DENSE = Layout(LAYER + MLP)
MIXTRAL = Layout(
    LAYER + (("mlp.gate.weight", "block_sparse_moe.gate.weight", "router"),),
    expert=(
        ("fc_1.weight", "w1.weight", "eup"),
        ("fc_2.weight", "w3.weight", "eup"),
        ("proj.weight", "w2.weight", "edown"),
    ),
    expert_prefix="block_sparse_moe.experts.",
)

VARIANTS = {
    "llama": Variant("llama", "LlamaForCausalLM", DENSE, tied=False),
    "mistral": Variant("mistral", "MistralForCausalLM", DENSE, tied=False),
    "mixtral": Variant("mixtral", "MixtralForCausalLM", MIXTRAL, tied=False),
}
PREFIX = {"llama": "Llama", "mistral": "Mistral", "mixtral": "Mixtral"}

#: transformers' defaults (5.3 config classes) for keys a config.json may leave out; pinned by a test.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
    "mistral": {
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 131072, "hidden_act": "silu",
        "sliding_window": 4096, "tie_word_embeddings": False,
    },
    "mixtral": {
        "rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 131072, "hidden_act": "silu",
        "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False,
    },
}  # fmt: skip


def _pick(name: str, mlp: str, sliding: bool) -> Variant | None:
    if lit_route(name, mlp) != "llama" or gemma_like(name, mlp):
        return None
    if mlp == "LLaMAMoE":
        return VARIANTS["mixtral"]
    if mlp == "LLaMAMLP":
        return VARIANTS[
            "mistral" if sliding or name.lower().startswith(("mistral", "mathstral")) else "llama"
        ]
    return None


class LlamaFamily(HubFamily):
    name = "llama"
    variants = VARIANTS

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        route, name = cfg_route(cfg)
        return route == "llama" and not gemma_like(name, str(cfg.get("mlp_class_name", "")))

    def variant_for_lit(self, c: LitModel) -> Variant:
        v = _pick(c.name, c.mlp, c.sliding_window is not None)
        if v is None:
            raise Unsupported(
                f"{c.source}: {c.name!r} ({c.mlp}) is not a model LitGPT converts as LLaMA/Mistral/Mixtral"
            )
        handled: dict[str, Any] = {
            "norm_class_name": "RMSNorm", "parallel_residual": False, "rotary_percentage": 1.0, "bias": False,
            "mlp_class_name": ANY, "rope_adjustments": ANY, "rope_condense_ratio": ANY,
            "gelu_approximate": ANY, "norm_qk_type": ANY, "norm_topk_prob": ANY,  # unused by these models
        }  # fmt: skip
        if v.model_type != "llama":
            handled.update(sliding_window_size=ANY, sliding_window_indices=ANY)
        if v.model_type == "mixtral":
            handled.update(n_expert=ANY, n_expert_per_token=ANY, moe_intermediate_size=ANY)
        c.check_features(handled, v.arch)
        if c.sliding_window is not None and not all(c.sliding_layers):
            raise Unsupported(
                f"{c.source}: sliding_window_indices leave some layers global; {v.arch} slides in every layer"
            )
        if v.model_type == "mixtral" and not 1 <= c.int("n_expert_per_token") <= c.n_expert:
            raise Unsupported(f"{c.source}: n_expert_per_token must be between 1 and n_expert ({c.n_expert})")
        lit_rope_scaling(c)  # refuses rope settings transformers cannot express
        return v

    def hf_config(
        self,
        cfg: Mapping[str, Any],
        *,
        tie: bool | None = None,
        base: Mapping[str, Any] | None = None,
        dtype: str | None = None,
    ) -> dict[str, Any]:
        c = LitModel(cfg)
        v = self.variant_for_lit(c)
        out = hf_base_config(c, v.model_type, v.arch, self.resolve_tie(v, tie, base), dtype)
        out["hidden_act"] = "silu"
        if v.model_type == "llama":
            out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        else:
            out["sliding_window"] = c.sliding_window
        if v.model_type == "mixtral":
            out.update(
                intermediate_size=c.expert_intermediate,
                num_local_experts=c.n_expert,
                num_experts_per_tok=c.v["n_expert_per_token"],
                router_jitter_noise=0.0,
            )
        return merge_base(out, base)

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = HfView(hf, HF_DEFAULTS[v.model_type])
        h.refuse("hidden_act", ["silu"], "LitGPT's LLaMA MLP is SiLU-gated")
        if v.model_type == "llama":
            h.refuse("attention_bias", [False], "LitGPT's LLaMA converter has no attention biases")
            h.refuse("mlp_bias", [False], "LitGPT's LLaMA converter has no MLP biases")
        sliding = v.model_type != "llama" and h.opt_int("sliding_window") is not None
        mlp = "LLaMAMoE" if v.model_type == "mixtral" else "LLaMAMLP"
        name, hfc = lit_name(
            hf, PREFIX[v.model_type], lambda n: _pick(n, mlp, sliding) is v and hf_route(n, mlp) == "llama"
        )
        out = lit_base_config(h, name, hfc)
        out["mlp_class_name"] = mlp
        if sliding:
            out["sliding_window_size"] = h.int("sliding_window")
        if v.model_type == "mixtral":
            out.update(
                n_expert=h.int("num_local_experts", MAX_EXPERTS),
                n_expert_per_token=h.int("num_experts_per_tok"),
            )
        return self.check_lit_config(out)


FAMILY = LlamaFamily()
