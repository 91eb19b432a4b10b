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

import re
from collections.abc import Mapping
from typing import Any

from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Step

from . import _fused as F

MODEL = "GPT-NeoX"
_BUFFERS = re.compile(r"gpt_neox\.layers\.\d+\.attention\.(rotary_emb\.inv_freq|bias|masked_bias)")
#: hidden_act ↔ LitGPT gelu_approximate ("gelu_new" and "gelu_pytorch_tanh" are both the tanh formula).
_ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_COMPARED = (
    "n_layer", "n_embd", "n_head", "head_size", "n_query_groups", "padded_vocab_size", "intermediate_size",
    "norm_eps", "parallel_residual", "gelu_approximate", "rope_n_elem", "rope_base", "bias", "mlp_class_name",
    "norm_class_name", "shared_attention_norm", "lm_head_bias",
)  # fmt: skip


class NeoX:
    name = "neox"

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        return cfg.get("mlp_class_name", "GptNeoxMLP") == "GptNeoxMLP" and not F.lit_name_claimed(cfg.get("name", ""))

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        mt = F.model_type(hf)
        return mt == "gpt_neox" or (mt is None and "GPTNeoXForCausalLM" in F.architectures(hf))

    def _check(self, c: Mapping[str, Any]) -> None:
        F.require(
            c,
            MODEL,
            {
                "mlp_class_name": ("GptNeoxMLP", ""),
                "norm_class_name": ("LayerNorm", ""),
                "bias": (True, "transformers' GPT-NeoX MLP always has biases"),
                "lm_head_bias": (False, "embed_out has no bias"),
                "shared_attention_norm": (False, "every GPT-NeoX layer has its own post_attention_layernorm"),
                "n_query_groups": (c["n_head"], "GPT-NeoX has no grouped-query attention"),
                "head_size": (c["n_embd"] // c["n_head"], "transformers derives the head size from hidden_size"),
                "n_embd": (c["n_head"] * c["head_size"], "hidden_size must be a multiple of the heads"),
                "sliding_window_size": (None, ""),
                "gelu_approximate": (("none", "tanh"), "transformers knows exact and tanh GELU"),
            },
        )

    def hf_config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        c = F.resolve_lit(cfg)
        self._check(c)
        return {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": c["padded_vocab_size"],
            "hidden_size": c["n_embd"],
            "num_hidden_layers": c["n_layer"],
            "num_attention_heads": c["n_head"],
            "intermediate_size": c["intermediate_size"],
            "hidden_act": "gelu" if c["gelu_approximate"] == "none" else "gelu_new",
            "max_position_embeddings": c["block_size"],
            "layer_norm_eps": c["norm_eps"],
            "use_parallel_residual": c["parallel_residual"],
            "attention_bias": True,
            "tie_word_embeddings": False,
            # 4.x reads rotary_pct / rotary_emb_base; 5.3 reads rotary_pct too and ignores a
            # partial_rotary_factor in rope_parameters (it forces 0.25 without rotary_pct)
            "rotary_pct": c["rotary_percentage"],
            "rotary_emb_base": c["rope_base"],
            **F.rope_json(c["rope_base"], c["rotary_percentage"]),
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            **F.TOKEN_IDS,
        }

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        theta, params = F.rope_from_hf(hf, MODEL, ("rotary_emb_base", "rope_theta"))
        pct = F.hf_float(hf, "rotary_pct", 0.25, low=-1e-12)
        if params.get("partial_rotary_factor", pct) != pct:
            raise F.refuse_hf(
                MODEL,
                f"rope_parameters.partial_rotary_factor {params['partial_rotary_factor']!r} with rotary_pct {pct!r}",
                "transformers 5.3 takes rotary_pct (default 0.25) and 4.x ignores rope_parameters: the model is ambiguous",
            )
        act = hf.get("hidden_act", "gelu")
        if act not in _ACT:
            raise F.refuse_hf(MODEL, f"hidden_act {act!r}", "LitGPT's GPT-NeoX MLP uses GELU (exact or tanh)")
        if not F.hf_bool(hf, "attention_bias", True):
            raise F.refuse_hf(MODEL, "attention_bias false", "LitGPT has one bias switch for attention and MLP")
        n_head = F.hf_int(hf, "num_attention_heads")
        n_embd = F.hf_int(hf, "hidden_size")
        vocab = F.hf_int(hf, "vocab_size")
        cfg = {
            "name": F.pick_name(hf, self._name_ok, "gpt-neox-hf"),
            "block_size": F.hf_int(hf, "max_position_embeddings", 2048),
            "n_layer": F.hf_int(hf, "num_hidden_layers"),
            "n_embd": n_embd,
            "n_head": n_head,
            "head_size": n_embd // n_head,
            "n_query_groups": n_head,
            "vocab_size": vocab,
            "padded_vocab_size": vocab,
            "norm_class_name": "LayerNorm",
            "norm_eps": F.hf_float(hf, "layer_norm_eps", 1e-5),
            "parallel_residual": F.hf_bool(hf, "use_parallel_residual", True),
            "shared_attention_norm": False,
            "bias": True,
            "lm_head_bias": False,
            "mlp_class_name": "GptNeoxMLP",
            "intermediate_size": F.hf_int(hf, "intermediate_size"),
            "gelu_approximate": _ACT[act],
            "rotary_percentage": pct,
            "rope_base": F.lit_number(theta),
        }
        self._check(F.resolve_lit(cfg, "the config derived from config.json"))
        return cfg

    def _name_ok(self, name: str) -> bool:
        return not F.lit_name_claimed(name)

    def _units(self, c: Mapping[str, Any], tied: bool, hf_names: Any = ()) -> list[F.Unit]:
        C, M, V = c["n_embd"], c["intermediate_size"], c["padded_vocab_size"]
        geo = F.geometry(c)
        qkv = geo.qkv_rows
        units = F.head("transformer.wte.weight", "gpt_neox.embed_in.weight", "embed_out.weight", (V, C), tied, hf_names)
        for i in range(c["n_layer"]):
            lit, hf = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
            units += [
                F.regrouped(lit + "attn.qkv.weight", hf + "attention.query_key_value.weight", (qkv, C), geo),
                F.regrouped(lit + "attn.qkv.bias", hf + "attention.query_key_value.bias", (qkv,), geo),
            ]
            for a, b, shape in (
                ("norm_1.weight", "input_layernorm.weight", (C,)),
                ("norm_1.bias", "input_layernorm.bias", (C,)),
                ("attn.proj.weight", "attention.dense.weight", (C, C)),
                ("attn.proj.bias", "attention.dense.bias", (C,)),
                ("norm_2.weight", "post_attention_layernorm.weight", (C,)),
                ("norm_2.bias", "post_attention_layernorm.bias", (C,)),
                ("mlp.fc.weight", "mlp.dense_h_to_4h.weight", (M, C)),
                ("mlp.fc.bias", "mlp.dense_h_to_4h.bias", (M,)),
                ("mlp.proj.weight", "mlp.dense_4h_to_h.weight", (C, M)),
                ("mlp.proj.bias", "mlp.dense_4h_to_h.bias", (C,)),
            ):
                units.append(F.same(lit + a, hf + b, shape))
        units += [
            F.same("transformer.ln_f.weight", "gpt_neox.final_layer_norm.weight", (C,)),
            F.same("transformer.ln_f.bias", "gpt_neox.final_layer_norm.bias", (C,)),
        ]
        return units

    def to_hf_steps(self, cfg: Mapping[str, Any], tensors: Mapping[str, TensorInfo], src: str, sink: str) -> list[Step]:
        c = F.resolve_lit(cfg)
        self._check(c)
        F.check_layers(c["n_layer"], tensors, "LitGPT checkpoint")
        return F.plan(self._units(c, tied=False), tensors, src, sink, "hf", f"LitGPT → Hugging Face {MODEL}")

    def to_lit_steps(
        self, cfg: Mapping[str, Any], hf: Mapping[str, Any], tensors: Mapping[str, TensorInfo], src: str, sink: str
    ) -> list[Step]:
        c = F.resolve_lit(cfg)
        self._check(c)
        F.same_model(c, F.resolve_lit(self.lit_config(hf)), _COMPARED)
        F.check_layers(c["n_layer"], tensors, "Hugging Face checkpoint")
        tied = F.hf_bool(hf, "tie_word_embeddings", False)
        units = self._units(c, tied, tensors)
        return F.plan(units, tensors, src, sink, "lit", f"Hugging Face {MODEL} → LitGPT", _BUFFERS)


FAMILY = NeoX()
