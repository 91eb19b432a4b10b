"""GPT-NeoX (Pythia, StableLM-alpha) ↔ LitGPT: LitGPT's ``copy_weights_gpt_neox``, both directions.

LitGPT reaches this family last: any config its converters do not claim by name (falcon, Gemma-2/3,
phi, Qwen2.5/QwQ, OLMo-2, Qwen3) whose ``mlp_class_name`` is ``GptNeoxMLP``.

The one non-rename: ``query_key_value`` rows are interleaved per head (``[q, k, v]`` for each head),
LitGPT's ``attn.qkv`` is grouped ``[Q|K|V]``; an exact row permutation (``Geometry``).

transformers' GPT-NeoX has no grouped-query attention, biases on every Linear of the MLP, two
LayerNorms per layer and an untied ``embed_out`` by default; LitGPT configs without these are refused.
Old transformers saves carry ``attention.bias`` / ``attention.masked_bias`` (the causal mask) and
``rotary_emb.inv_freq`` buffers; they are recomputed from the config, and LitGPT skips them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool_lit.hub.config_json import read_rope
from ckpt_tool_lit.hub.family import HubFamily, Variant
from ckpt_tool_lit.hub.model_config import ANY, LitModel, cfg_route, lit_name, need, same_route, whole
from ckpt_tool_lit.hub.tensors import Layout, T

MODEL = "GPT-NeoX"
#: hidden_act ↔ LitGPT gelu_approximate ("gelu_new" and "gelu_pytorch_tanh" are both the tanh formula).
ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def _norm(lit: str, hf: str) -> tuple[T, T]:
    return T(f"{lit}.weight", f"{hf}.weight"), T(f"{lit}.bias", f"{hf}.bias")


NEOX = Layout(
    (
        *_norm("norm_1", "input_layernorm"),
        T("attn.qkv.weight", "attention.query_key_value.weight", regroup=True),
        T("attn.qkv.bias", "attention.query_key_value.bias", regroup=True),
        T("attn.proj.weight", "attention.dense.weight"),
        T("attn.proj.bias", "attention.dense.bias"),
        *_norm("norm_2", "post_attention_layernorm"),
        T("mlp.fc.weight", "mlp.dense_h_to_4h.weight"),
        T("mlp.fc.bias", "mlp.dense_h_to_4h.bias"),
        T("mlp.proj.weight", "mlp.dense_4h_to_h.weight"),
        T("mlp.proj.bias", "mlp.dense_4h_to_h.bias"),
    ),
    hf_layer="gpt_neox.layers.",
    top=_norm("transformer.ln_f", "gpt_neox.final_layer_norm"),
    embed="gpt_neox.embed_in.weight",
    head="embed_out.weight",
    buffers=r"gpt_neox\.layers\.\d+\.attention\.(rotary_emb\.inv_freq|bias|masked_bias)",
)
VARIANTS = {"gpt_neox": Variant("gpt_neox", "GPTNeoXForCausalLM", NEOX)}
#: transformers' defaults (5.3 GPTNeoXConfig) for keys a config.json may leave out; pinned by a test.
HF_DEFAULTS = {
    "gpt_neox": {
        "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "use_parallel_residual": True, "rotary_pct": 0.25,
        "rotary_emb_base": 10000, "rope_theta": 10000.0, "hidden_act": "gelu", "attention_bias": True,
        "tie_word_embeddings": False,
    }
}  # fmt: skip


class NeoX(HubFamily):
    name = "neox"
    variants = VARIANTS
    hf_defaults = HF_DEFAULTS
    routes = ("gpt_neox",)

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        """LitGPT's fallback takes any MLP class; only GPT-NeoX's own is this architecture."""
        route, _, mlp = cfg_route(cfg)
        return route == "gpt_neox" and mlp == "GptNeoxMLP"

    def variant_for_lit(self, c: LitModel) -> Variant:
        g = c.geometry
        c.require(
            MODEL,
            {
                "bias": need(True, why="transformers' GPT-NeoX MLP always has biases"),
                "shared_attention_norm": need(False, why="every GPT-NeoX layer has its own post_attention_layernorm"),
                "n_query_groups": need(g.n_head, why="GPT-NeoX has no grouped-query attention"),
                "head_size": need(c.n_embd // g.n_head, why="transformers derives the head size from hidden_size"),
                "n_embd": need(g.n_head * g.head_size, why="hidden_size must be a multiple of the heads"),
                "gelu_approximate": need("none", "tanh", why="transformers knows exact and tanh GELU"),
                "rotary_percentage": ANY, "parallel_residual": ANY,
            },
        )  # fmt: skip
        return VARIANTS["gpt_neox"]

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        return {
            "intermediate_size": c.intermediate,
            "hidden_act": "gelu" if c["gelu_approximate"] == "none" else "gelu_new",
            "layer_norm_eps": c.norm_eps,
            "use_parallel_residual": c["parallel_residual"],
            "attention_bias": True,
            # 4.x reads rotary_pct / rotary_emb_base; 5.3 reads rotary_pct too and ignores a
            # partial_rotary_factor in rope_parameters (it forces 0.25 without rotary_pct)
            "rotary_pct": c["rotary_percentage"],
            "rotary_emb_base": c.rope_base,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
        }

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = self.view(hf, v)
        rope = read_rope(h, theta_keys=("rotary_emb_base", "rope_theta"))
        rope.plain(MODEL)
        pct = h.get("rotary_pct")
        if not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 <= pct <= 1:
            raise h.unsupported(f"rotary_pct {pct!r:.20}", "it is not a number in [0, 1]")
        if rope.params.get("partial_rotary_factor", pct) != pct:
            raise h.unsupported(
                f"rope_parameters.partial_rotary_factor {rope.params['partial_rotary_factor']!r} with rotary_pct {pct!r}",
                "transformers 5.3 takes rotary_pct (default 0.25) and 4.x ignores rope_parameters: the model is ambiguous",
            )
        act = h.get("hidden_act")
        if act not in ACT:
            raise h.unsupported(f"hidden_act {act!r:.40}", "LitGPT's GPT-NeoX MLP uses GELU (exact or tanh)")
        h.refuse("attention_bias", [True], "LitGPT has one bias switch for attention and MLP")
        name, hfc = lit_name(hf, "gpt-neox-hf", lambda n: same_route(n, "GptNeoxMLP", "gpt_neox"))
        out = self.lit_sizes(
            h, name, hfc, norm_class_name="LayerNorm", norm_eps=h.num("layer_norm_eps"),
            parallel_residual=h.flag("use_parallel_residual"), bias=True, mlp_class_name="GptNeoxMLP",
            intermediate_size=h.int("intermediate_size"), gelu_approximate=ACT[act], rotary_percentage=pct,
            rope_base=whole(rope.theta),
        )  # fmt: skip
        return self.check_lit_config(out)


FAMILY = NeoX()
