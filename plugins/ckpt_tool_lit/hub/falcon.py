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
``tie_word_embeddings: false``; Falcon's config.json default is tied (see ``_fused.head``).
Biases (``bias``) are converted too, though no LitGPT Falcon config has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_tool.errors import Unsupported
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Step

from . import _fused as F

MODEL = "Falcon"
_ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_COMPARED = (
    "n_layer", "n_embd", "n_head", "head_size", "n_query_groups", "padded_vocab_size", "intermediate_size",
    "norm_eps", "shared_attention_norm", "gelu_approximate", "rope_n_elem", "rope_base", "bias",
)  # fmt: skip


def _shared_by_name(name: str) -> bool | None:
    """LitGPT's layout test (``copy_weights_falcon``): True = "7b" layout, False = "40b"/"180B", None = neither."""
    if "7b" in name:
        return True
    if "40b" in name or "180B" in name:
        return False
    return None


class Falcon:
    name = "falcon"

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        name = cfg.get("name", "")
        return isinstance(name, str) and "falcon" in name

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        mt = F.model_type(hf)
        return mt == "falcon" or (mt is None and "FalconForCausalLM" in F.architectures(hf))

    def _check(self, c: Mapping[str, Any]) -> None:
        shared = _shared_by_name(c["name"])
        if shared is None:
            raise Unsupported(
                f"LitGPT config {c['name']!r}: LitGPT's Falcon converter knows its layout by '7b', '40b' or "
                "'180B' in the name",
                "name the model after the layout it has (falcon-7b-…: one LayerNorm per layer; falcon-40b-…: two)",
            )
        F.require(
            c,
            MODEL,
            {
                "shared_attention_norm": (shared, "the name selects the LayerNorm layout in LitGPT's converter"),
                "mlp_class_name": ("GptNeoxMLP", ""),
                "norm_class_name": ("LayerNorm", ""),
                "lm_head_bias": (False, ""),
                "parallel_residual": (True, "LitGPT's converter maps the parallel Falcon block only"),
                "rope_n_elem": (c["head_size"], "Falcon rotates every head dimension (rotary_percentage 1.0)"),
                "gelu_approximate": (("none", "tanh"), "transformers knows exact and tanh GELU"),
                "head_size": (c["n_embd"] // c["n_head"], "transformers derives the head size from hidden_size"),
                "n_embd": (c["n_head"] * c["head_size"], "hidden_size must be a multiple of the heads"),
                "sliding_window_size": (None, ""),
            },
        )

    def hf_config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        c = F.resolve_lit(cfg)
        self._check(c)
        heads, groups, shared = c["n_head"], c["n_query_groups"], c["shared_attention_norm"]
        if shared and groups in (1, heads):
            layout = {"new_decoder_architecture": False, "multi_query": groups == 1, "num_ln_in_parallel_attn": None}
        else:  # transformers >= 4.41 knows num_ln_in_parallel_attn = 1 (Falcon2)
            layout = {"new_decoder_architecture": True, "multi_query": True, "num_ln_in_parallel_attn": 1 if shared else 2}
        return {
            "architectures": ["FalconForCausalLM"],
            "model_type": "falcon",
            "vocab_size": c["padded_vocab_size"],
            "hidden_size": c["n_embd"],
            "num_hidden_layers": c["n_layer"],
            "num_attention_heads": heads,
            "num_kv_heads": groups,
            **layout,
            "parallel_attn": True,
            "alibi": False,
            "bias": c["bias"],
            "ffn_hidden_size": c["intermediate_size"],
            "activation": "gelu" if c["gelu_approximate"] == "none" else "gelu_pytorch_tanh",
            "layer_norm_epsilon": c["norm_eps"],
            "max_position_embeddings": c["block_size"],
            **F.rope_json(c["rope_base"]),
            "tie_word_embeddings": False,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            **F.TOKEN_IDS,
        }

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        if F.hf_bool(hf, "alibi", False):
            raise F.refuse_hf(MODEL, "alibi", "LitGPT's Falcon uses rotary embeddings")
        if not F.hf_bool(hf, "parallel_attn", True):
            raise F.refuse_hf(MODEL, "parallel_attn false", "LitGPT's converter maps the parallel Falcon block only")
        theta, params = F.rope_from_hf(hf, MODEL)
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise F.refuse_hf(MODEL, "partial_rotary_factor", "transformers' Falcon rotates the whole head")
        act = hf.get("activation", "gelu")
        if act not in _ACT:
            raise F.refuse_hf(MODEL, f"activation {act!r}", "LitGPT's Falcon MLP uses GELU")
        heads = F.hf_int(hf, "num_attention_heads")
        n_embd = F.hf_int(hf, "hidden_size")
        kv = hf.get("num_kv_heads")
        n_ln = hf.get("num_ln_in_parallel_attn")
        if F.hf_bool(hf, "new_decoder_architecture", False):
            groups = F.hf_int(hf, "num_kv_heads", heads)
            if n_ln not in (None, 1, 2):
                raise F.refuse_hf(MODEL, f"num_ln_in_parallel_attn {n_ln!r}", "transformers knows 1 or 2")
            shared = n_ln == 1
        else:
            if n_ln not in (None, 1):
                raise F.refuse_hf(MODEL, f"num_ln_in_parallel_attn {n_ln!r}", "the old Falcon layout has one LayerNorm")
            multi = F.hf_bool(hf, "multi_query", True)
            if not multi and kv not in (None, heads):
                raise F.refuse_hf(MODEL, f"num_kv_heads {kv!r} without multi_query", "transformers needs every head")
            groups, shared = (1 if multi else heads), True
        vocab = F.hf_int(hf, "vocab_size")
        cfg = {
            "name": F.pick_name(
                hf,
                lambda n: "falcon" in n and _shared_by_name(n) == shared,
                "falcon-7b-hf" if shared else "falcon-40b-hf",
            ),
            "block_size": F.hf_int(hf, "max_position_embeddings", 2048),
            "n_layer": F.hf_int(hf, "num_hidden_layers"),
            "n_embd": n_embd,
            "n_head": heads,
            "head_size": n_embd // heads,
            "n_query_groups": groups,
            "vocab_size": vocab,
            "padded_vocab_size": vocab,
            "norm_class_name": "LayerNorm",
            "norm_eps": F.hf_float(hf, "layer_norm_epsilon", 1e-5),
            "parallel_residual": True,
            "shared_attention_norm": shared,
            "bias": F.hf_bool(hf, "bias", False),
            "lm_head_bias": False,
            "mlp_class_name": "GptNeoxMLP",
            "intermediate_size": F.hf_int(hf, "ffn_hidden_size", 4 * n_embd),
            "gelu_approximate": _ACT[act],
            "rotary_percentage": 1.0,
            "rope_base": F.lit_number(theta),
        }
        self._check(F.resolve_lit(cfg, "the config derived from config.json"))
        return cfg

    def _units(self, c: Mapping[str, Any], tied: bool, hf_names: Any = ()) -> list[F.Unit]:
        C, M, V = c["n_embd"], c["intermediate_size"], c["padded_vocab_size"]
        geo = F.geometry(c)
        q = geo.qkv_sizes[0]
        kinds = ("weight", "bias") if c["bias"] else ("weight",)
        norms = (
            (("norm_1", "input_layernorm"),)
            if c["shared_attention_norm"]
            else (("norm_1", "ln_attn"), ("norm_2", "ln_mlp"))
        )
        units = F.head("transformer.wte.weight", "transformer.word_embeddings.weight", "lm_head.weight", (V, C), tied, hf_names)
        for i in range(c["n_layer"]):
            p = f"transformer.h.{i}."  # the same prefix on both sides
            for k in kinds:
                w = k == "weight"
                units += [
                    F.regrouped(p + f"attn.qkv.{k}", p + f"self_attention.query_key_value.{k}", (geo.qkv_rows, C) if w else (geo.qkv_rows,), geo),
                    F.same(p + f"attn.proj.{k}", p + f"self_attention.dense.{k}", (C, q) if w else (C,)),
                    F.same(p + f"mlp.fc.{k}", p + f"mlp.dense_h_to_4h.{k}", (M, C) if w else (M,)),
                    F.same(p + f"mlp.proj.{k}", p + f"mlp.dense_4h_to_h.{k}", (C, M) if w else (C,)),
                ]
            for a, b in norms:
                units += [F.same(p + f"{a}.{k}", p + f"{b}.{k}", (C,)) for k in ("weight", "bias")]
        units += [
            F.same("transformer.ln_f.weight", "transformer.ln_f.weight", (C,)),
            F.same("transformer.ln_f.bias", "transformer.ln_f.bias", (C,)),
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
        tied = F.hf_bool(hf, "tie_word_embeddings", True)  # FalconConfig's default
        return F.plan(self._units(c, tied, tensors), tensors, src, sink, "lit", f"Hugging Face {MODEL} → LitGPT")


FAMILY = Falcon()
