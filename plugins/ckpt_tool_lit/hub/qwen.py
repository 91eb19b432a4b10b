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
from ckpt_tool.limits import MAX_EXPERTS
from ckpt_tool_lit.hub.family import HubFamily, Variant
from ckpt_tool_lit.hub.llama import LAYER, MLP, QK_NORM, RULES, lit_llama, llama_json
from ckpt_tool_lit.hub.model_config import ANY, LitModel, lit_name, same_route
from ckpt_tool_lit.hub.tensors import QKV, Layout, T

QWEN2 = Layout(LAYER[:2] + (T("attn.qkv.bias", QKV),) + LAYER[2:] + MLP)
QWEN3 = Layout(LAYER[:3] + QK_NORM + LAYER[3:] + MLP)
QWEN3_MOE = Layout(
    LAYER[:3] + QK_NORM + LAYER[3:] + (T("mlp.gate.weight", "mlp.gate.weight"),),
    expert=(
        T("fc_1.weight", "gate_proj.weight"),
        T("fc_2.weight", "up_proj.weight"),
        T("proj.weight", "down_proj.weight"),
    ),
    expert_prefix="mlp.experts.",
)

VARIANTS = {
    "qwen2": Variant("qwen2", "Qwen2ForCausalLM", QWEN2),
    "qwen3": Variant("qwen3", "Qwen3ForCausalLM", QWEN3),
    "qwen3_moe": Variant("qwen3_moe", "Qwen3MoeForCausalLM", QWEN3_MOE),
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
    hf_defaults = HF_DEFAULTS
    routes = ("qwen_2_5", "qwen_3")

    def variant_for_lit(self, c: LitModel) -> Variant:
        if c.route == "qwen_2_5":
            v = VARIANTS["qwen2"]
        elif c.route == "qwen_3":
            v = VARIANTS["qwen3_moe" if c.mlp == "LLaMAMoE" else "qwen3"]
        else:
            raise Unsupported(f"{c.source}: {c.name!r} is not a model LitGPT converts as Qwen2.5 / Qwen3")
        rules: dict[str, Any] = {**RULES, "mlp_class_name": "LLaMAMLP"}
        if v.model_type == "qwen2":
            rules["attn_bias"] = True
        else:
            rules.update(norm_qk=True, norm_qk_type="default")
        if v.model_type == "qwen3_moe":
            rules.update(mlp_class_name="LLaMAMoE", n_expert=ANY, n_expert_per_token=ANY, moe_intermediate_size=ANY)
        c.require(v.arch, rules)
        if v.model_type == "qwen3_moe" and not 1 <= c.v["n_expert_per_token"] <= c.n_expert:
            raise Unsupported(f"{c.source}: n_expert_per_token must be between 1 and n_expert ({c.n_expert})")
        c.rope_scaling()
        return v

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        out = {
            **llama_json(c), "hidden_act": "silu", "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": c.n_layer,
        }  # fmt: skip
        if v.model_type != "qwen2":
            out["attention_bias"] = False
        if v.model_type == "qwen3_moe":
            out.update(
                num_experts=c.n_expert, num_experts_per_tok=c.v["n_expert_per_token"],
                moe_intermediate_size=c.expert_intermediate, norm_topk_prob=True, decoder_sparse_step=1,
                mlp_only_layers=[],
            )  # fmt: skip
        return out

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = self.view(hf, v)
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
        route, prefix = ROUTE[v.model_type], PREFIX[v.model_type]
        name, hfc = lit_name(hf, prefix, lambda n: same_route(n, mlp, route), prefix)
        out = lit_llama(h, name, hfc, mlp_class_name=mlp)
        if v.model_type == "qwen2":
            out["attn_bias"] = True
        else:
            out["norm_qk"] = True
        if moe:
            key = "num_experts" if "num_experts" in hf or "num_local_experts" not in hf else "num_local_experts"
            out.update(
                n_expert=h.int(key, MAX_EXPERTS), n_expert_per_token=h.int("num_experts_per_tok"),
                moe_intermediate_size=h.int("moe_intermediate_size"),
            )  # fmt: skip
        return self.check_lit_config(out)


FAMILY = QwenFamily()
