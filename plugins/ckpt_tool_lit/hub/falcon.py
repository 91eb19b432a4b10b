"""Falcon ↔ LitGPT: LitGPT's ``copy_weights_falcon``, both directions.

LitGPT claims every config whose name contains "falcon" (case-sensitive, so Falcon3 goes to LLaMA) and
picks the norm layout by name: "7b" → one ``input_layernorm`` per layer (LitGPT
``shared_attention_norm``), "40b" / "180B" → ``ln_attn`` + ``ln_mlp``. ``query_key_value`` rows are
interleaved per query group (``[q…, k, v]`` per group) in every transformers layout, and LitGPT
regroups them to ``[Q|K|V]`` (``qkv_reassemble``), an exact row permutation.

transformers' layouts and their LitGPT configs (all with a parallel attention + MLP block):

================================================  =============================================
config.json                                       LitGPT
================================================  =============================================
``new_decoder_architecture`` false, multi_query    "7b" name, ``n_query_groups`` 1 (falcon-7b)
``new_decoder_architecture`` false, not multi_q.   "7b" name, ``n_query_groups`` = ``n_head``
``new_decoder_architecture``, 2 LayerNorms         "40b"/"180B" name, any ``n_query_groups``
``new_decoder_architecture``, 1 LayerNorm          "7b" name, other ``n_query_groups`` (Falcon2-11B)
================================================  =============================================

Refused: ALiBi (``alibi``), sequential blocks (``parallel_attn`` false), partial rotary — LitGPT's
Falcon has none of them. LitGPT keeps its own ``lm_head``, so converted configs say
``tie_word_embeddings: false``; Falcon's config.json default is tied (see ``tensors.units``).
Biases (``bias``) are converted too, though no LitGPT Falcon config has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool.errors import Unsupported
from ckpt_tool_lit.hub.config_json import read_rope
from ckpt_tool_lit.hub.family import HubFamily, Variant
from ckpt_tool_lit.hub.model_config import ANY, LitModel, lit_name, need, same_route, whole
from ckpt_tool_lit.hub.tensors import Layout, T

MODEL = "Falcon"
ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
VARIANTS = {"falcon": Variant("falcon", "FalconForCausalLM", None)}
#: transformers' defaults (5.3 FalconConfig) for keys a config.json may leave out; pinned by a test.
#: (Absent ``num_kv_heads`` / ``ffn_hidden_size`` mean the head count / 4 × hidden_size.)
HF_DEFAULTS = {
    "falcon": {
        "max_position_embeddings": 2048, "layer_norm_epsilon": 1e-5, "activation": "gelu", "alibi": False,
        "parallel_attn": True, "new_decoder_architecture": False, "multi_query": True, "bias": False,
        "tie_word_embeddings": True, "num_ln_in_parallel_attn": None, "rope_theta": 10000.0,
    }
}  # fmt: skip


def _shared_by_name(name: str) -> bool | None:
    """LitGPT's layout test (``copy_weights_falcon``): True = "7b" layout, False = "40b"/"180B", None = neither."""
    if "7b" in name:
        return True
    if "40b" in name or "180B" in name:
        return False
    return None


class Falcon(HubFamily):
    name = "falcon"
    variants = VARIANTS
    hf_defaults = HF_DEFAULTS
    routes = ("falcon",)

    def variant_for_lit(self, c: LitModel) -> Variant:
        shared = _shared_by_name(c.name)
        if shared is None:
            raise Unsupported(
                f"{c.source}: name {c.name!r}: LitGPT's Falcon converter knows its layout by '7b', '40b' or "
                "'180B' in the name",
                "name the model after the layout it has (falcon-7b-…: one LayerNorm per layer; falcon-40b-…: two)",
            )
        g = c.geometry
        c.require(
            MODEL,
            {
                "shared_attention_norm": need(shared, why="the name selects the LayerNorm layout in LitGPT's converter"),
                "rope_n_elem": need(g.head_size, why="Falcon rotates every head dimension (rotary_percentage 1.0)"),
                "gelu_approximate": need("none", "tanh", why="transformers knows exact and tanh GELU"),
                "head_size": need(c.n_embd // g.n_head, why="transformers derives the head size from hidden_size"),
                "n_embd": need(g.n_head * g.head_size, why="hidden_size must be a multiple of the heads"),
                "bias": ANY, "rotary_percentage": ANY,
            },
        )  # fmt: skip
        return VARIANTS["falcon"]

    def layout(self, c: LitModel, v: Variant) -> Layout:
        """The same prefix on both sides; biases when ``bias``; one LayerNorm ("7b") or two ("40b")."""
        kinds = ("weight", "bias") if c["bias"] else ("weight",)
        norm_1, norm_2 = ("input_layernorm", None) if c["shared_attention_norm"] else ("ln_attn", "ln_mlp")

        def norm(lit: str, hf: str | None) -> list[T]:
            return [T(f"{lit}.{k}", f"{hf}.{k}") for k in ("weight", "bias")] if hf else []

        def linear(lit: str, hf: str, regroup: bool = False) -> list[T]:
            return [T(f"{lit}.{k}", f"{hf}.{k}", regroup) for k in kinds]

        layer = [  # LitGPT's module order
            *norm("norm_1", norm_1),
            *linear("attn.qkv", "self_attention.query_key_value", regroup=True),
            *linear("attn.proj", "self_attention.dense"),
            *norm("norm_2", norm_2),
            *linear("mlp.fc", "mlp.dense_h_to_4h"),
            *linear("mlp.proj", "mlp.dense_4h_to_h"),
        ]
        return Layout(
            tuple(layer),
            hf_layer="transformer.h.",
            top=tuple(norm("transformer.ln_f", "transformer.ln_f")),
            embed="transformer.word_embeddings.weight",
        )

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        heads, groups, shared = c.geometry.n_head, c.geometry.n_query_groups, c["shared_attention_norm"]
        if shared and groups in (1, heads):
            layout = {"new_decoder_architecture": False, "multi_query": groups == 1, "num_ln_in_parallel_attn": None}
        else:  # transformers >= 4.41 knows num_ln_in_parallel_attn = 1 (Falcon2)
            layout = {"new_decoder_architecture": True, "multi_query": True, "num_ln_in_parallel_attn": 1 if shared else 2}
        return {
            "num_kv_heads": groups,
            **layout,
            "parallel_attn": True,
            "alibi": False,
            "bias": c["bias"],
            "ffn_hidden_size": c.intermediate,
            "activation": "gelu" if c["gelu_approximate"] == "none" else "gelu_pytorch_tanh",
            "layer_norm_epsilon": c.norm_eps,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
        }

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = self.view(hf, v)
        h.refuse("alibi", [False], "LitGPT's Falcon uses rotary embeddings")
        h.refuse("parallel_attn", [True], "LitGPT's converter maps the parallel Falcon block only")
        rope = read_rope(h)
        rope.plain(MODEL)
        if rope.partial not in (None, 1):
            raise h.unsupported(f"partial_rotary_factor {rope.partial!r}", "transformers' Falcon rotates the whole head")
        act = h.get("activation")
        if act not in ACT:
            raise h.unsupported(f"activation {act!r:.40}", "LitGPT's Falcon MLP uses GELU")
        heads, n_embd = h.int("num_attention_heads"), h.int("hidden_size")
        n_ln = h.get("num_ln_in_parallel_attn")
        if h.flag("new_decoder_architecture"):
            groups = h.opt_int("num_kv_heads") or heads
            if n_ln not in (None, 1, 2):
                raise h.unsupported(f"num_ln_in_parallel_attn {n_ln!r:.20}", "transformers knows 1 or 2")
            shared = n_ln == 1
        else:
            if n_ln not in (None, 1):
                raise h.unsupported(f"num_ln_in_parallel_attn {n_ln!r:.20}", "the old Falcon layout has one LayerNorm")
            multi = h.flag("multi_query")
            if not multi and h.get("num_kv_heads") not in (None, heads):
                raise h.unsupported(f"num_kv_heads {h.get('num_kv_heads')!r:.20} without multi_query", "transformers needs every head")
            groups, shared = (1 if multi else heads), True
        name, hfc = lit_name(
            hf, "falcon-7b-hf" if shared else "falcon-40b-hf",
            lambda n: same_route(n, "GptNeoxMLP", "falcon") and _shared_by_name(n) == shared,
        )  # fmt: skip
        out = self.lit_sizes(
            h, name, hfc, n_query_groups=groups, norm_class_name="LayerNorm", norm_eps=h.num("layer_norm_epsilon"),
            parallel_residual=True, shared_attention_norm=shared, bias=h.flag("bias"), mlp_class_name="GptNeoxMLP",
            intermediate_size=h.opt_int("ffn_hidden_size") or 4 * n_embd, gelu_approximate=ACT[act],
            rotary_percentage=1.0, rope_base=whole(rope.theta),
        )  # fmt: skip
        return self.check_lit_config(out)


FAMILY = Falcon()
