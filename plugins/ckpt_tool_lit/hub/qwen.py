"""Qwen2.5 (and QwQ) and Qwen3 (dense and MoE): LitGPT's ``copy_weights_qwen_2_5`` / ``copy_weights_qwen_3``.

LitGPT picks these converters by name (``qwen2.5…`` / ``qwq…`` / ``qwen3…``, any case). Qwen2.5 is LLaMA with
a bias on q, k and v only (LitGPT ``attn_bias``; transformers' Qwen2 always has it), split and fused like
the weights. Qwen3 drops the bias and adds per-head q/k RMSNorms (``norm_qk``) and an explicit ``head_dim``;
Qwen3-MoE names experts ``mlp.experts.E.{gate,up,down}_proj`` and the router ``mlp.gate``. LitGPT's MoE
softmaxes the top-k router logits, i.e. always renormalises: only ``norm_topk_prob: true`` converts.
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
    hf_base_config,
    hf_route,
    lit_base_config,
    lit_name,
    lit_rope_scaling,
    lit_route,
    merge_base,
)
from ckpt_tool_lit.hub.llama import LAYER, MLP

QK_NORM = (
    ("attn.norm_q.weight", "self_attn.q_norm.weight", "head"),
    ("attn.norm_k.weight", "self_attn.k_norm.weight", "head"),
)
QWEN2 = Layout(LAYER[:2] + (("attn.qkv.bias", QKV, "qkv_bias"),) + LAYER[2:] + MLP)
QWEN3 = Layout(LAYER + QK_NORM + MLP)
QWEN3_MOE = Layout(
    LAYER + QK_NORM + (("mlp.gate.weight", "mlp.gate.weight", "router"),),
    expert=(
        ("fc_1.weight", "gate_proj.weight", "eup"),
        ("fc_2.weight", "up_proj.weight", "eup"),
        ("proj.weight", "down_proj.weight", "edown"),
    ),
    expert_prefix="mlp.experts.",
)

VARIANTS = {
    "qwen2": Variant("qwen2", "Qwen2ForCausalLM", QWEN2, tied=False),
    "qwen3": Variant("qwen3", "Qwen3ForCausalLM", QWEN3, tied=False),
    "qwen3_moe": Variant("qwen3_moe", "Qwen3MoeForCausalLM", QWEN3_MOE, tied=False),
}
PREFIX = {"qwen2": "Qwen2.5", "qwen3": "Qwen3", "qwen3_moe": "Qwen3"}
ROUTE = {"qwen2": "qwen_2_5", "qwen3": "qwen_3", "qwen3_moe": "qwen_3"}

_COMMON = {
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_sliding_window": False,
}  # fmt: skip
#: transformers' defaults (5.3 config classes) for keys a config.json may leave out; pinned by a test.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2": _COMMON,
    "qwen3": {**_COMMON, "head_dim": 128, "attention_bias": False},
    "qwen3_moe": {
        **_COMMON, "attention_bias": False, "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
        "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [],
    },
}  # fmt: skip


class QwenFamily(HubFamily):
    name = "qwen"
    variants = VARIANTS

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        return cfg_route(cfg)[0] in ("qwen_2_5", "qwen_3")

    def variant_for_lit(self, c: LitModel) -> Variant:
        if c.route == "qwen_2_5":
            v = VARIANTS["qwen2"]
        elif c.route == "qwen_3":
            v = VARIANTS["qwen3_moe" if c.mlp == "LLaMAMoE" else "qwen3"]
        else:
            raise Unsupported(f"{c.source}: {c.name!r} is not a model LitGPT converts as Qwen2.5 / Qwen3")
        handled: dict[str, Any] = {
            "norm_class_name": "RMSNorm", "parallel_residual": False, "rotary_percentage": 1.0, "bias": False,
            "mlp_class_name": "LLaMAMLP", "rope_adjustments": ANY, "rope_condense_ratio": ANY,
            "gelu_approximate": ANY, "norm_topk_prob": ANY,  # unused by these models
        }  # fmt: skip
        if v.model_type == "qwen2":
            handled["attn_bias"] = True
        else:
            handled.update(norm_qk=True, norm_qk_type="default")
        if v.model_type == "qwen3_moe":
            handled.update(
                mlp_class_name="LLaMAMoE", n_expert=ANY, n_expert_per_token=ANY, moe_intermediate_size=ANY
            )
        c.check_features(handled, v.arch)
        if v.model_type == "qwen3_moe" and not 1 <= c.int("n_expert_per_token") <= c.n_expert:
            raise Unsupported(f"{c.source}: n_expert_per_token must be between 1 and n_expert ({c.n_expert})")
        lit_rope_scaling(c)
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
        out.update(
            hidden_act="silu", use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layer
        )
        if v.model_type != "qwen2":
            out["attention_bias"] = False
        if v.model_type == "qwen3_moe":
            out.update(
                num_experts=c.n_expert,
                num_experts_per_tok=c.v["n_expert_per_token"],
                moe_intermediate_size=c.expert_intermediate,
                norm_topk_prob=True,
                decoder_sparse_step=1,
                mlp_only_layers=[],
            )
        return merge_base(out, base)

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = HfView(hf, HF_DEFAULTS[v.model_type])
        h.refuse("hidden_act", ["silu"], "LitGPT's LLaMA MLP is SiLU-gated")
        h.refuse("use_sliding_window", [False], "LitGPT's Qwen configs have no sliding window")
        if v.model_type != "qwen2":
            h.refuse("attention_bias", [False], "LitGPT's Qwen3 converter has no attention biases")
        moe = v.model_type == "qwen3_moe"
        if moe:
            h.refuse("norm_topk_prob", [True], "LitGPT's MoE router always renormalises the top-k weights")
            h.refuse("decoder_sparse_step", [1], "LitGPT puts the MoE in every layer")
            h.refuse("mlp_only_layers", [[]], "LitGPT puts the MoE in every layer")
        mlp = "LLaMAMoE" if moe else "LLaMAMLP"
        route = ROUTE[v.model_type]
        name, hfc = lit_name(
            hf, PREFIX[v.model_type], lambda n: lit_route(n, mlp) == route and hf_route(n, mlp) == route
        )
        out = lit_base_config(h, name, hfc)
        out["mlp_class_name"] = mlp
        if v.model_type == "qwen2":
            out["attn_bias"] = True
        else:
            out["norm_qk"] = True
        if moe:
            experts = h.raw.get(
                "num_experts", h.raw.get("num_local_experts", HF_DEFAULTS["qwen3_moe"]["num_experts"])
            )
            out.update(
                n_expert=HfView({"num_experts": experts}, {}).int("num_experts", MAX_EXPERTS),
                n_expert_per_token=h.int("num_experts_per_tok"),
                moe_intermediate_size=h.int("moe_intermediate_size"),
            )
        return self.check_lit_config(out)


FAMILY = QwenFamily()
