"""Phi ↔ LitGPT: LitGPT's ``copy_weights_phi``, which serves two Hugging Face model types.

* ``phi`` (phi-1.5, phi-2): separate ``q_proj`` / ``k_proj`` / ``v_proj`` (with biases) that LitGPT
  fuses into ``attn.qkv`` rows ``[Q|K|V]``; ``dense``, ``fc1`` / ``fc2``, one LayerNorm per layer
  (LitGPT ``shared_attention_norm``, parallel residual), partial rotary (``partial_rotary_factor``),
  an ``lm_head`` with a bias.
* ``phi3`` (Phi-3, Phi-3.5, phi-4, Phi-4-mini, Phi-4-reasoning): ``qkv_proj`` already fused in LitGPT's
  row order; ``gate_up_proj`` = rows of ``fc_1`` (gate) then ``fc_2`` (up), split by ``chunk(2)``.

LitGPT picks the variant by name: ``name.lower()`` starting with "phi-3" / "phi-4" is ``phi3``.
Phi-4-mini ties its head to the embeddings in Hugging Face; LitGPT keeps a separate ``lm_head``
(``convert_hf_checkpoint`` copies the embeddings into it, ``convert_lit_checkpoint`` drops it for
every name starting with "Phi-4"). Here only "Phi-4-mini*" is tied, and the head is checked to still
equal the embeddings when the tensors are read; phi-4 and Phi-4-reasoning (untied in Hugging Face) keep
their ``lm_head.weight``, where LitGPT's converter would drop it and leave transformers a random head.

Not converted (refused): LongRoPE (``rope_scaling`` type "longrope"/"su": Phi-3-128k, Phi-3.5-mini,
Phi-4-mini on the hub) — LitGPT computes plain RoPE for those names, so its model is not transformers'
model; ``qk_layernorm``; activations other than GELU (phi) / SiLU (phi3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool.errors import Unsupported
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Step
from ckpt_tool_lit.hub.config_json import read_rope
from ckpt_tool_lit.hub.family import HubFamily, Variant
from ckpt_tool_lit.hub.model_config import ANY, LitModel, lit_name, need, same_route, whole
from ckpt_tool_lit.hub.tensors import QKV, Layout, T

ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
PHI = Layout(
    (
        T("norm_1.weight", "input_layernorm.weight"),
        T("norm_1.bias", "input_layernorm.bias"),
        T("attn.qkv.weight", QKV),
        T("attn.qkv.bias", QKV),
        T("attn.proj.weight", "self_attn.dense.weight"),
        T("attn.proj.bias", "self_attn.dense.bias"),
        T("mlp.fc.weight", "mlp.fc1.weight"),
        T("mlp.fc.bias", "mlp.fc1.bias"),
        T("mlp.proj.weight", "mlp.fc2.weight"),
        T("mlp.proj.bias", "mlp.fc2.bias"),
    ),
    top=(
        T("transformer.ln_f.weight", "model.final_layernorm.weight"),
        T("transformer.ln_f.bias", "model.final_layernorm.bias"),
    ),
)
PHI3 = Layout(
    (
        T("norm_1.weight", "input_layernorm.weight"),
        T("attn.qkv.weight", "self_attn.qkv_proj.weight"),
        T("attn.proj.weight", "self_attn.o_proj.weight"),
        T("norm_2.weight", "post_attention_layernorm.weight"),
        T(("mlp.fc_1.weight", "mlp.fc_2.weight"), "mlp.gate_up_proj.weight"),
        T("mlp.proj.weight", "mlp.down_proj.weight"),
    )
)
VARIANTS = {"phi": Variant("phi", "PhiForCausalLM", PHI), "phi3": Variant("phi3", "Phi3ForCausalLM", PHI3)}
#: transformers' defaults (5.3 PhiConfig / Phi3Config) for keys a config.json may leave out; pinned by a test.
HF_DEFAULTS = {
    "phi": {
        "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new", "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5, "qk_layernorm": False, "tie_word_embeddings": False,
    },
    "phi3": {
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu", "rope_theta": 10000.0,
        "partial_rotary_factor": 1.0, "sliding_window": None, "tie_word_embeddings": False,
    },
}  # fmt: skip
UNTIE = (
    "to keep a head trained apart from the embeddings, convert the model untied: give it a name not "
    "starting with 'Phi-4-mini' in model_config.yaml (e.g. 'Phi-4-untied')"
)


def _is_phi3(name: str) -> bool:
    return name.lower().startswith(("phi-3", "phi-4"))


def _tied(name: str) -> bool:
    return name.startswith("Phi-4-mini")


class Phi(HubFamily):
    name = "phi"
    variants = VARIANTS
    hf_defaults = HF_DEFAULTS
    routes = ("phi",)
    untie_hint = UNTIE

    def variant_for_lit(self, c: LitModel) -> Variant:
        if c.route != "phi":
            raise Unsupported(f"{c.source}: {c.name!r} is not a model LitGPT converts as Phi")
        g = c.geometry
        common = {
            "head_size": need(c.n_embd // g.n_head, why="transformers derives the head size from hidden_size"),
            "n_embd": need(g.n_head * g.head_size, why="hidden_size must be a multiple of the heads"),
            "rotary_percentage": ANY,
        }
        if not _is_phi3(c.name):
            c.require(
                "Phi",
                {
                    **common,
                    "bias": need(True, why="Phi Linears always have biases"),
                    "lm_head_bias": need(True, why="Phi's lm_head has a bias"),
                    "shared_attention_norm": need(True, why="Phi has one LayerNorm per layer"),
                    "gelu_approximate": need("none", "tanh", why="transformers knows exact and tanh GELU"),
                },
            )
            return VARIANTS["phi"]
        c.require(
            "Phi-3",
            {
                **common, "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm",
                "bias": need(False, why="Phi-3 Linears have no biases"), "parallel_residual": False,
                "sliding_window_size": ANY, "sliding_window_indices": ANY,
            },
        )  # fmt: skip
        if c.sliding_window is not None and not all(c.sliding_layers):
            raise Unsupported(
                f"{c.source}: sliding_window_indices = {c.v['sliding_window_indices']!r:.40}: transformers applies "
                "Phi-3's sliding window to every layer"
            )
        return VARIANTS["phi3"]

    def default_tie(self, c: LitModel, v: Variant) -> bool:
        return v.model_type == "phi3" and _tied(c.name)

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intermediate_size": c.intermediate,
            "num_key_value_heads": c.geometry.n_query_groups,
            "partial_rotary_factor": c["rotary_percentage"],
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attention_dropout": 0.0,
        }
        if v.model_type == "phi3":
            return {
                **out, "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
                "original_max_position_embeddings": c.block_size, "sliding_window": c.sliding_window,
            }  # fmt: skip
        act = "gelu" if c["gelu_approximate"] == "none" else "gelu_new"
        return {**out, "hidden_act": act, "layer_norm_eps": c.norm_eps, "qk_layernorm": False}

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        v = self.variant_for_hf(hf)
        h = self.view(hf, v)
        phi3 = v.model_type == "phi3"
        model = "Phi-3" if phi3 else "Phi"
        rope = read_rope(h)
        rope.plain(model)
        n_head, hidden = h.int("num_attention_heads"), h.int("hidden_size")
        if h.get("head_dim") not in (None, hidden // n_head):
            raise h.unsupported(f"head_dim {h.get('head_dim')!r:.20}", "LitGPT's converter assumes hidden_size / heads")
        fields: dict[str, Any] = {
            "n_query_groups": h.opt_int("num_key_value_heads") or n_head,
            "intermediate_size": h.int("intermediate_size"),
            "rotary_percentage": rope.partial if rope.partial is not None else h.num("partial_rotary_factor"),
            "rope_base": whole(rope.theta),
        }
        tied = h.flag("tie_word_embeddings")
        if phi3:
            h.refuse("hidden_act", ["silu"], "LitGPT's LLaMAMLP uses SiLU")
            name, hfc = lit_name(hf, "Phi-4-mini-hf" if tied else "Phi-3-hf", lambda n: self._phi3_name(n, tied))
            fields.update(
                norm_class_name="RMSNorm", norm_eps=h.num("rms_norm_eps"), parallel_residual=False, bias=False,
                mlp_class_name="LLaMAMLP", sliding_window_size=h.opt_int("sliding_window"),
            )  # fmt: skip
        else:
            h.refuse("qk_layernorm", [False], "LitGPT's Phi has no q/k LayerNorm")
            act = h.get("hidden_act")
            if act not in ACT:
                raise h.unsupported(f"hidden_act {act!r:.40}", "LitGPT's Phi MLP uses GELU (exact or tanh)")
            fits = lambda n: not _is_phi3(n) and same_route(n, "GptNeoxMLP", "phi")  # noqa: E731
            name, hfc = lit_name(hf, "phi-hf", fits)
            fields.update(
                norm_class_name="LayerNorm", norm_eps=h.num("layer_norm_eps"), parallel_residual=True,
                shared_attention_norm=True, bias=True, lm_head_bias=True, mlp_class_name="GptNeoxMLP",
                gelu_approximate=ACT[act],
            )  # fmt: skip
        return self.check_lit_config(self.lit_sizes(h, name, hfc, **fields))

    @staticmethod
    def _phi3_name(name: str, tied: bool) -> bool:
        # LitGPT's convert_hf_checkpoint tests these prefixes case-sensitively; the tie follows the name
        return name.startswith(("Phi-3", "phi-4", "Phi-4")) and _tied(name) == tied and same_route(name, "LLaMAMLP", "phi")

    def to_lit_steps(
        self, cfg: Mapping[str, Any], hf: Mapping[str, Any], tensors: Mapping[str, TensorInfo], src: str, sink: str
    ) -> list[Step]:
        if any(n.startswith(("layers.", "transformer.")) for n in tensors):
            raise Unsupported(
                "Hugging Face Phi: the tensor names are those of Microsoft's early remote-code Phi "
                "(layers.* / transformer.*), not of transformers' PhiForCausalLM",
                "download the current revision of the model (LitGPT refuses these files too)",
            )
        return super().to_lit_steps(cfg, hf, tensors, src, sink)


FAMILY = Phi()
