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

from ckpt_tool.errors import Refused, Unsupported
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Step

from . import _fused as F

_ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_COMPARED = (
    "n_layer", "n_embd", "n_head", "head_size", "n_query_groups", "padded_vocab_size", "intermediate_size",
    "norm_eps", "parallel_residual", "shared_attention_norm", "gelu_approximate", "rope_n_elem", "rope_base",
    "bias", "lm_head_bias", "mlp_class_name", "norm_class_name", "sliding_window_size", "sliding_window_indices",
)  # fmt: skip


def _is_phi3(name: str) -> bool:
    return name.lower().startswith(("phi-3", "phi-4"))


def _tied(name: str) -> bool:
    return name.startswith("Phi-4-mini")


class Phi:
    name = "phi"

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        name = cfg.get("name", "")
        return isinstance(name, str) and name.lower().startswith("phi")

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        mt = F.model_type(hf)
        archs = F.architectures(hf)
        return mt in ("phi", "phi3") or (mt is None and bool({"PhiForCausalLM", "Phi3ForCausalLM"} & set(archs)))

    # -- configs -----------------------------------------------------------------------------------

    def _check(self, c: Mapping[str, Any]) -> None:
        common = {
            "head_size": (c["n_embd"] // c["n_head"], "transformers derives the head size from hidden_size"),
            "n_embd": (c["n_head"] * c["head_size"], "hidden_size must be a multiple of the heads"),
        }
        if _is_phi3(c["name"]):
            window = c["sliding_window_size"]  # (indices are None without a window: resolve_lit)
            F.require(
                c,
                "Phi-3",
                {
                    **common,
                    "mlp_class_name": ("LLaMAMLP", ""),
                    "norm_class_name": ("RMSNorm", ""),
                    "bias": (False, "Phi-3 Linears have no biases"),
                    "lm_head_bias": (False, ""),
                    "parallel_residual": (False, ""),
                    "shared_attention_norm": (False, ""),
                    "sliding_window_indices": (
                        None if window is None else [1] * c["n_layer"],
                        "transformers applies Phi-3's sliding window to every layer",
                    ),
                },
            )
        else:
            F.require(
                c,
                "Phi",
                {
                    **common,
                    "mlp_class_name": ("GptNeoxMLP", ""),
                    "norm_class_name": ("LayerNorm", ""),
                    "bias": (True, "Phi Linears always have biases"),
                    "lm_head_bias": (True, "Phi's lm_head has a bias"),
                    "parallel_residual": (True, "Phi layers are parallel"),
                    "shared_attention_norm": (True, "Phi has one LayerNorm per layer"),
                    "gelu_approximate": (("none", "tanh"), "transformers knows exact and tanh GELU"),
                    "sliding_window_size": (None, ""),
                },
            )

    def hf_config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        c = F.resolve_lit(cfg)
        self._check(c)
        out: dict[str, Any] = {
            "vocab_size": c["padded_vocab_size"],
            "hidden_size": c["n_embd"],
            "intermediate_size": c["intermediate_size"],
            "num_hidden_layers": c["n_layer"],
            "num_attention_heads": c["n_head"],
            "num_key_value_heads": c["n_query_groups"],
            "max_position_embeddings": c["block_size"],
            "partial_rotary_factor": c["rotary_percentage"],
            **F.rope_json(c["rope_base"], c["rotary_percentage"]),
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attention_dropout": 0.0,
            **F.TOKEN_IDS,
        }
        if _is_phi3(c["name"]):
            return {
                "architectures": ["Phi3ForCausalLM"],
                "model_type": "phi3",
                **out,
                "hidden_act": "silu",
                "rms_norm_eps": c["norm_eps"],
                "original_max_position_embeddings": c["block_size"],
                "sliding_window": c["sliding_window_size"],
                "tie_word_embeddings": _tied(c["name"]),
            }
        return {
            "architectures": ["PhiForCausalLM"],
            "model_type": "phi",
            **out,
            "hidden_act": "gelu" if c["gelu_approximate"] == "none" else "gelu_new",
            "layer_norm_eps": c["norm_eps"],
            "qk_layernorm": False,
            "tie_word_embeddings": False,
        }

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        phi3 = F.model_type(hf) == "phi3" or (F.model_type(hf) is None and "Phi3ForCausalLM" in F.architectures(hf))
        model = "Phi-3" if phi3 else "Phi"
        theta, params = F.rope_from_hf(hf, model)
        partial = self._partial(hf, params, 1.0 if phi3 else 0.5)
        n_head = F.hf_int(hf, "num_attention_heads")
        n_embd = F.hf_int(hf, "hidden_size")
        if hf.get("head_dim") not in (None, n_embd // n_head):
            raise F.refuse_hf(model, f"head_dim {hf['head_dim']!r}", "LitGPT's converter assumes hidden_size / heads")
        vocab = F.hf_int(hf, "vocab_size")
        cfg: dict[str, Any] = {
            "block_size": F.hf_int(hf, "max_position_embeddings", 4096 if phi3 else 2048),
            "n_layer": F.hf_int(hf, "num_hidden_layers"),
            "n_embd": n_embd,
            "n_head": n_head,
            "head_size": n_embd // n_head,
            "n_query_groups": F.hf_int(hf, "num_key_value_heads", n_head),
            "vocab_size": vocab,
            "padded_vocab_size": vocab,
            "intermediate_size": F.hf_int(hf, "intermediate_size"),
            "rotary_percentage": partial,
            "rope_base": F.lit_number(theta),
        }
        tied = F.hf_bool(hf, "tie_word_embeddings", False)
        if phi3:
            if hf.get("hidden_act", "silu") != "silu":
                raise F.refuse_hf(model, f"hidden_act {hf['hidden_act']!r}", "LitGPT's LLaMAMLP uses SiLU")
            window = hf.get("sliding_window")
            cfg.update(
                name=F.pick_name(hf, lambda n: self._phi3_name(n, tied), "Phi-4-mini-hf" if tied else "Phi-3-hf"),
                norm_class_name="RMSNorm",
                norm_eps=F.hf_float(hf, "rms_norm_eps", 1e-5),
                parallel_residual=False,
                shared_attention_norm=False,
                bias=False,
                lm_head_bias=False,
                mlp_class_name="LLaMAMLP",
                sliding_window_size=None if window is None else F.hf_int(hf, "sliding_window"),
            )
        else:
            if F.hf_bool(hf, "qk_layernorm", False):
                raise F.refuse_hf(model, "qk_layernorm", "LitGPT's Phi has no q/k LayerNorm")
            act = hf.get("hidden_act", "gelu_new")
            if act not in _ACT:
                raise F.refuse_hf(model, f"hidden_act {act!r}", "LitGPT's Phi MLP uses GELU (exact or tanh)")
            cfg.update(
                name=F.pick_name(hf, lambda n: n.lower().startswith("phi") and not _is_phi3(n), "phi-hf"),
                norm_class_name="LayerNorm",
                norm_eps=F.hf_float(hf, "layer_norm_eps", 1e-5),
                parallel_residual=True,
                shared_attention_norm=True,
                bias=True,
                lm_head_bias=True,
                mlp_class_name="GptNeoxMLP",
                gelu_approximate=_ACT[act],
            )
        self._check(F.resolve_lit(cfg, "the config derived from config.json"))
        return cfg

    @staticmethod
    def _phi3_name(name: str, tied: bool) -> bool:
        # LitGPT's convert_hf_checkpoint tests these prefixes case-sensitively; the tie follows the name
        return name.startswith(("Phi-3", "phi-4", "Phi-4")) and _tied(name) == tied

    @staticmethod
    def _partial(hf: Mapping[str, Any], params: Mapping[str, Any], default: float) -> float:
        """partial_rotary_factor: 5.x takes rope_parameters' first, 4.x the top-level key; they must agree."""
        values = [v for v in (params.get("partial_rotary_factor"), hf.get("partial_rotary_factor")) if v is not None]
        for v in values:
            if not F._number(v) or not 0 < v <= 1:
                raise F._bad("config.json", "partial_rotary_factor", v, "a number in (0, 1]")
        if len(set(values)) > 1:
            raise F.refuse_hf(
                "Phi", f"partial_rotary_factor {values[0]!r} and {values[1]!r}", "transformers 4.x and 5.x read different ones"
            )
        return values[0] if values else default

    # -- tensors -----------------------------------------------------------------------------------

    def _units(self, c: Mapping[str, Any], tied: bool, hf_names: Any = ()) -> list[F.Unit]:
        C, M, V = c["n_embd"], c["intermediate_size"], c["padded_vocab_size"]
        geo = F.geometry(c)
        q, kv, _ = geo.qkv_sizes
        phi3 = _is_phi3(c["name"])
        untie = (
            "to keep a head trained apart from the embeddings, convert the model untied: give it a name not "
            "starting with 'Phi-4-mini' in model_config.yaml (e.g. 'Phi-4-untied')"
        )
        units = F.head(
            "transformer.wte.weight", "model.embed_tokens.weight", "lm_head.weight", (V, C), tied, hf_names, untie
        )
        for i in range(c["n_layer"]):
            lit, hf = f"transformer.h.{i}.", f"model.layers.{i}."
            if phi3:
                units += [
                    F.same(lit + "norm_1.weight", hf + "input_layernorm.weight", (C,)),
                    F.same(lit + "attn.qkv.weight", hf + "self_attn.qkv_proj.weight", (geo.qkv_rows, C)),
                    F.same(lit + "attn.proj.weight", hf + "self_attn.o_proj.weight", (C, q)),
                    F.same(lit + "norm_2.weight", hf + "post_attention_layernorm.weight", (C,)),
                    F.fused_in_hf(
                        ((lit + "mlp.fc_1.weight", (M, C)), (lit + "mlp.fc_2.weight", (M, C))),
                        hf + "mlp.gate_up_proj.weight",
                        "gate_up_proj = fc_1 rows, then fc_2 rows",
                    ),
                    F.same(lit + "mlp.proj.weight", hf + "mlp.down_proj.weight", (C, M)),
                ]
                continue
            for kind, tail in (("weight", (C,)), ("bias", ())):
                units.append(
                    F.split_in_hf(
                        lit + f"attn.qkv.{kind}",
                        [(hf + f"self_attn.{p}_proj.{kind}", (n, *tail)) for p, n in (("q", q), ("k", kv), ("v", kv))],
                        f"q/k/v {kind} rows of the fused qkv",
                    )
                )
            for a, b, shape in (
                ("norm_1.weight", "input_layernorm.weight", (C,)),
                ("norm_1.bias", "input_layernorm.bias", (C,)),
                ("attn.proj.weight", "self_attn.dense.weight", (C, q)),
                ("attn.proj.bias", "self_attn.dense.bias", (C,)),
                ("mlp.fc.weight", "mlp.fc1.weight", (M, C)),
                ("mlp.fc.bias", "mlp.fc1.bias", (M,)),
                ("mlp.proj.weight", "mlp.fc2.weight", (C, M)),
                ("mlp.proj.bias", "mlp.fc2.bias", (C,)),
            ):
                units.append(F.same(lit + a, hf + b, shape))
        if phi3:
            units.append(F.same("transformer.ln_f.weight", "model.norm.weight", (C,)))
        else:
            units += [
                F.same("transformer.ln_f.weight", "model.final_layernorm.weight", (C,)),
                F.same("transformer.ln_f.bias", "model.final_layernorm.bias", (C,)),
                F.same("lm_head.bias", "lm_head.bias", (V,)),
            ]
        return units

    def to_hf_steps(self, cfg: Mapping[str, Any], tensors: Mapping[str, TensorInfo], src: str, sink: str) -> list[Step]:
        c = F.resolve_lit(cfg)
        self._check(c)
        F.check_layers(c["n_layer"], tensors, "LitGPT checkpoint")
        tied = _is_phi3(c["name"]) and _tied(c["name"])
        return F.plan(self._units(c, tied), tensors, src, sink, "hf", f"LitGPT → Hugging Face {self._model(c)}")

    def to_lit_steps(
        self, cfg: Mapping[str, Any], hf: Mapping[str, Any], tensors: Mapping[str, TensorInfo], src: str, sink: str
    ) -> list[Step]:
        if any(n.startswith(("layers.", "transformer.")) for n in tensors):
            raise Unsupported(
                "Hugging Face Phi: the tensor names are those of Microsoft's early remote-code Phi "
                "(layers.* / transformer.*), not of transformers' PhiForCausalLM",
                "download the current revision of the model (LitGPT refuses these files too)",
            )
        c = F.resolve_lit(cfg)
        self._check(c)
        derived = F.resolve_lit(self.lit_config(hf))
        if _is_phi3(c["name"]) != _is_phi3(derived["name"]):
            raise Refused(
                f"model_config.yaml names a {self._model(c)} model ({c['name']!r}), config.json is "
                f"model_type {F.model_type(hf)!r}",
                "drop model_config.yaml to derive it from config.json, or fix its name",
            )
        F.same_model(c, derived, _COMPARED)
        F.check_layers(c["n_layer"], tensors, "Hugging Face checkpoint")
        tied = F.hf_bool(hf, "tie_word_embeddings", False)
        units = self._units(c, tied, tensors)
        return F.plan(units, tensors, src, sink, "lit", f"Hugging Face {self._model(c)} → LitGPT")

    @staticmethod
    def _model(c: Mapping[str, Any]) -> str:
        return "Phi-3" if _is_phi3(c["name"]) else "Phi"


FAMILY = Phi()
