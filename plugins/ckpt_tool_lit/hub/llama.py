"""LLaMA 2/3, Mistral, Mixtral: what LitGPT's ``copy_weights_llama`` / ``copy_weights_hf_llama`` convert.

LitGPT sends every model whose name routes nowhere else (falcon, Gemma-2/3, phi, Qwen2.5, OLMo-2, Qwen3) and
whose MLP is ``LLaMAMLP`` / ``GemmaMLP`` / ``LLaMAMoE`` through that code; Gemma 1 (``"Gemma" in name``) is
in ``gemma.py``. The transformers architecture of a LitGPT config: ``LLaMAMoE`` → Mixtral; a sliding window
or a Mistral/Mathstral name → Mistral; else LLaMA (TinyLlama, SmolLM2, Falcon3, CodeLlama... are LLaMA).
LitGPT configs LlamaForCausalLM cannot express (LayerNorm, partial rotary, parallel residual, biases:
OLMo-1, StableLM, StableCode) are refused by setting.

The LLaMA-like ``config.json`` keys and settings that Gemma and Qwen share live here too
(``llama_json``, ``lit_llama``, ``RULES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool.errors import Unsupported
from ckpt_tool.limits import MAX_EXPERTS
from ckpt_tool_lit.hub.config_json import HfView, read_rope
from ckpt_tool_lit.hub.family import HubFamily, Variant
from ckpt_tool_lit.hub.model_config import ANY, LitModel, cfg_route, lit_name, lit_route, same_route, whole
from ckpt_tool_lit.hub.tensors import QKV, Layout, T

LAYER = (
    T("norm_1.weight", "input_layernorm.weight"),
    T("attn.qkv.weight", QKV),
    T("attn.proj.weight", "self_attn.o_proj.weight"),
    T("norm_2.weight", "post_attention_layernorm.weight"),
)
MLP = (
    T("mlp.fc_1.weight", "mlp.gate_proj.weight"),
    T("mlp.fc_2.weight", "mlp.up_proj.weight"),
    T("mlp.proj.weight", "mlp.down_proj.weight"),
)
#: Per-head q/k RMSNorms (Gemma-3, Qwen3), in LitGPT's order right after the attention projections.
QK_NORM = (
    T("attn.norm_q.weight", "self_attn.q_norm.weight"),
    T("attn.norm_k.weight", "self_attn.k_norm.weight"),
)
DENSE = Layout(LAYER + MLP)
MIXTRAL = Layout(
    LAYER + (T("mlp.gate.weight", "block_sparse_moe.gate.weight"),),
    expert=(T("fc_1.weight", "w1.weight"), T("fc_2.weight", "w3.weight"), T("proj.weight", "w2.weight")),
    expert_prefix="block_sparse_moe.experts.",
)

VARIANTS = {
    "llama": Variant("llama", "LlamaForCausalLM", DENSE),
    "mistral": Variant("mistral", "MistralForCausalLM", DENSE),
    "mixtral": Variant("mixtral", "MixtralForCausalLM", MIXTRAL),
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

#: Settings every LLaMA-like architecture (LLaMA, Mistral, Mixtral, Gemma, Qwen) maps or ignores.
RULES: dict[str, Any] = {
    "norm_class_name": "RMSNorm", "parallel_residual": False, "rotary_percentage": 1.0, "bias": False,
    "rope_adjustments": ANY, "rope_condense_ratio": ANY,  # checked by LitModel.rope_scaling
    "gelu_approximate": ANY, "norm_qk_type": ANY, "norm_topk_prob": ANY,  # unused by these models
}  # fmt: skip


def llama_json(c: LitModel) -> dict[str, Any]:
    """The ``config.json`` keys every LLaMA-like family writes the same way."""
    g = c.geometry
    return {
        "intermediate_size": c.intermediate,
        "num_key_value_heads": g.n_query_groups,
        "head_dim": g.head_size,
        "rms_norm_eps": c.norm_eps,
        "attention_dropout": 0.0,
        "use_cache": True,
    }


def lit_llama(
    h: HfView, name: str, hf_config: Mapping[str, str], rope_layers: str | None = None, **fields: Any
) -> dict[str, Any]:
    """The LitGPT settings every LLaMA-like family maps the same way, from ``config.json`` (the rope of
    ``rope_layers`` for per-layer-type configs)."""
    n_head, hidden = h.int("num_attention_heads"), h.int("hidden_size")
    rope = read_rope(h, rope_layers)
    if rope.partial not in (None, 1):
        raise h.unsupported(f"partial_rotary_factor {rope.partial!r}", "LitGPT's LLaMA-like models rotate whole heads")
    common = dict(
        head_size=h.opt_int("head_dim") or hidden // n_head,
        n_query_groups=h.opt_int("num_key_value_heads") or n_head,
        norm_class_name="RMSNorm", norm_eps=h.num("rms_norm_eps"), parallel_residual=False,
        rope_base=whole(rope.theta), rotary_percentage=1.0, rope_adjustments=rope.adjustments(),
        intermediate_size=h.int("intermediate_size"), bias=False, mlp_class_name="LLaMAMLP",
    )  # fmt: skip
    return HubFamily.lit_sizes(h, name, hf_config, **{**common, **fields})


def _gemma_like(name: str, mlp: str) -> bool:
    """LitGPT treats a model as Gemma by name (``"Gemma" in name``: RMSNorm adds 1 to its weight) and MLP class."""
    return "Gemma" in name or mlp == "GemmaMLP"


def _pick(name: str, mlp: str, sliding: bool) -> Variant | None:
    if lit_route(name, mlp) != "llama" or _gemma_like(name, mlp):
        return None
    if mlp == "LLaMAMoE":
        return VARIANTS["mixtral"]
    if mlp == "LLaMAMLP":
        return VARIANTS["mistral" if sliding or name.lower().startswith(("mistral", "mathstral")) else "llama"]
    return None


class LlamaFamily(HubFamily):
    name = "llama"
    variants = VARIANTS
    hf_defaults = HF_DEFAULTS

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        route, name, mlp = cfg_route(cfg)
        return route == "llama" and not _gemma_like(name, mlp)

    def variant_for_lit(self, c: LitModel) -> Variant:
        v = _pick(c.name, c.mlp, c.sliding_window is not None)
        if v is None:
            raise Unsupported(f"{c.source}: {c.name!r} ({c.mlp}) is not a model LitGPT converts as LLaMA/Mistral/Mixtral")
        rules = {**RULES, "mlp_class_name": ANY}
        if v.model_type != "llama":
            rules.update(sliding_window_size=ANY, sliding_window_indices=ANY)
        if v.model_type == "mixtral":
            rules.update(n_expert=ANY, n_expert_per_token=ANY, moe_intermediate_size=ANY)
        c.require(v.arch, rules)
        if c.sliding_window is not None and not all(c.sliding_layers):
            raise Unsupported(f"{c.source}: sliding_window_indices leave some layers global; {v.arch} slides in every layer")
        if v.model_type == "mixtral" and not 1 <= c.v["n_expert_per_token"] <= c.n_expert:
            raise Unsupported(f"{c.source}: n_expert_per_token must be between 1 and n_expert ({c.n_expert})")
        c.rope_scaling()  # refuses rope settings transformers cannot express
        return v

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        out = {**llama_json(c), "hidden_act": "silu"}
        if v.model_type == "llama":
            out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        else:
            out["sliding_window"] = c.sliding_window
        if v.model_type == "mixtral":
            out.update(
                intermediate_size=c.expert_intermediate, num_local_experts=c.n_expert,
                num_experts_per_tok=c.v["n_expert_per_token"], router_jitter_noise=0.0,
            )  # fmt: skip
        return out

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = self.view(hf, v)
        h.refuse("hidden_act", ["silu"], "LitGPT's LLaMA MLP is SiLU-gated")
        if v.model_type == "llama":
            h.refuse("attention_bias", [False], "LitGPT's LLaMA converter has no attention biases")
            h.refuse("mlp_bias", [False], "LitGPT's LLaMA converter has no MLP biases")
        sliding = v.model_type != "llama" and h.opt_int("sliding_window") is not None
        mlp = "LLaMAMoE" if v.model_type == "mixtral" else "LLaMAMLP"
        prefix = PREFIX[v.model_type]
        name, hfc = lit_name(hf, prefix, lambda n: _pick(n, mlp, sliding) is v and same_route(n, mlp, "llama"), prefix)
        out = lit_llama(h, name, hfc, mlp_class_name=mlp)
        if sliding:
            out["sliding_window_size"] = h.int("sliding_window")
        if v.model_type == "mixtral":
            out.update(n_expert=h.int("num_local_experts", MAX_EXPERTS), n_expert_per_token=h.int("num_experts_per_tok"))
        return self.check_lit_config(out)


FAMILY = LlamaFamily()
