"""``HubFamily``: the ``Family`` interface implemented once; each family module fills in its architecture.

A family module says what is particular to it — which transformers model types it converts
(``Variant``\\ s), which LitGPT configs it claims and which of their settings the architecture can
express (``variant_for_lit``), its ``config.json`` keys both ways (``config_json``, ``lit_config``),
its tensor table (``Layout``) — and inherits everything else: the one signature of every family,
the tie decision, token ids and dtype, the consistency checks between ``model_config.yaml`` and
``config.json``, and plan building.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ckpt_tool.errors import Refused, Unsupported
from ckpt_tool.limits import MAX_HEADS, MAX_LAYERS
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Step
from ckpt_tool_lit.hub.config_json import HfView, base_tie, dtype_keys, merge_base
from ckpt_tool_lit.hub.model_config import LIT_DEFAULTS, LitModel, cfg_route, hf_route
from ckpt_tool_lit.hub.tensors import Layout, plan, units


@dataclass(frozen=True)
class Variant:
    """One transformers model type a family converts to and from."""

    model_type: str
    arch: str  # the transformers class (``architectures``)
    layout: Layout | None  # None: the family builds it from the config (``layout``)
    tied: bool = False  # lit → hf: tie the head unless told otherwise (``default_tie``)


class HubFamily:
    """``Family`` for one group of transformers architectures (see ``ckpt_tool_lit.hub.Family``)."""

    name = ""
    variants: Mapping[str, Variant] = {}
    #: transformers' config class defaults per model type, for keys a config.json leaves out.
    hf_defaults: Mapping[str, Mapping[str, Any]] = {}
    #: LitGPT converter routes (``lit_route``) this family takes.
    routes: tuple[str, ...] = ()
    #: the architecture's RMSNorm computes with ``1 + weight``, as LitGPT's for names containing "Gemma".
    gemma_norms = False

    # -- what each family provides ---------------------------------------------------------------

    def variant_for_lit(self, c: LitModel) -> Variant:
        """The variant of a LitGPT config; refuses (``c.require``) settings the variant cannot express."""
        raise NotImplementedError

    def config_json(self, c: LitModel, v: Variant) -> dict[str, Any]:
        """The architecture's own ``config.json`` keys (after the sizes every family writes)."""
        raise NotImplementedError

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        """A full ``model_config.yaml`` (every LitGPT field) such that ``litgpt.GPT(Config(**it))`` is the model."""
        raise NotImplementedError

    def default_tie(self, c: LitModel, v: Variant) -> bool:
        return v.tied

    def layout(self, c: LitModel, v: Variant) -> Layout:
        assert v.layout is not None
        return v.layout

    untie_hint = ""

    # -- dispatch ----------------------------------------------------------------------------------

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        return cfg_route(cfg)[0] in self.routes

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        try:
            self.variant_for_hf(hf)
        except Unsupported:
            return False
        return True

    def variant_for_hf(self, hf: Mapping[str, Any]) -> Variant:
        """By ``model_type``, or by ``architectures`` in a config.json that has none."""
        mt = hf.get("model_type") if isinstance(hf, Mapping) else None
        if mt in self.variants:
            return self.variants[mt]
        archs = hf.get("architectures") if isinstance(hf, Mapping) and mt is None else None
        for v in self.variants.values():
            if isinstance(archs, list) and v.arch in archs:
                return v
        raise Unsupported(f"config.json: model_type {mt!r:.40} is not a {self.name} model")

    def view(self, hf: Mapping[str, Any], v: Variant) -> HfView:
        return HfView(hf, self.hf_defaults.get(v.model_type, {}))

    def model(self, cfg: Mapping[str, Any], source: str = "model_config.yaml") -> tuple[LitModel, Variant]:
        """The checked LitGPT model and its variant."""
        c = LitModel(cfg, source)
        v = self.variant_for_lit(c)
        c.require_plain_names(v.arch, self.gemma_norms)
        return c, v

    def resolve_tie(self, c: LitModel, v: Variant, tie: bool | None, base: Mapping[str, Any] | None) -> bool:
        """Tie the head when asked; by default as the original config.json (``base``) says, else as the family
        does. ``hf_config`` and ``to_hf_steps`` decide alike when given the same ``tie`` / ``base``."""
        if tie is not None:
            return bool(tie)
        stated = base_tie(base)
        return self.default_tie(c, v) if stated is None else stated

    # -- the Family interface -----------------------------------------------------------------------

    def hf_config(
        self,
        cfg: Mapping[str, Any],
        *,
        tie: bool | None = None,
        base: Mapping[str, Any] | None = None,
        dtype: str | None = None,
    ) -> dict[str, Any]:
        c, v = self.model(cfg)
        out: dict[str, Any] = {
            "architectures": [v.arch],
            "model_type": v.model_type,
            "vocab_size": c.vocab,
            "hidden_size": c.n_embd,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.geometry.n_head,
            "max_position_embeddings": c.block_size,
            "rope_theta": float(c.rope_base),
            "rope_scaling": c.rope_scaling(),
            **self.config_json(c, v),
            "tie_word_embeddings": self.resolve_tie(c, v, tie, base),
            **dtype_keys(dtype),
        }
        src = c.v["hf_config"] if isinstance(c.v["hf_config"], Mapping) else {}
        org, repo = src.get("org"), src.get("name")
        if isinstance(org, str) and isinstance(repo, str) and f"{org}/{repo}".isprintable() and "/" not in org + repo:
            out["_name_or_path"] = f"{org}/{repo}"  # the repository the LitGPT config names; lit_config reads it back
        return merge_base(out, base)

    def to_hf_steps(
        self,
        cfg: Mapping[str, Any],
        tensors: Mapping[str, TensorInfo],
        src: str,
        sink: str,
        *,
        tie: bool | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> list[Step]:
        c, v = self.model(cfg)
        tied = self.resolve_tie(c, v, tie, base)
        layout = self.layout(c, v)
        return plan(
            units(c, layout, tied, untie=self.untie_hint), tensors, src, sink, "hf",
            side="LitGPT", arch=v.arch, n_layer=c.n_layer,
        )  # fmt: skip

    def to_lit_steps(
        self,
        cfg: Mapping[str, Any],
        hf: Mapping[str, Any],
        tensors: Mapping[str, TensorInfo],
        src: str,
        sink: str,
    ) -> list[Step]:
        """``cfg`` is ``lit_config(hf)`` or the user's model_config.yaml, which must describe the same model."""
        c, v_lit = self.model(cfg)
        v = self.variant_for_hf(hf)
        derived, _ = self.model(self.lit_config(hf), "the config derived from config.json")
        layout = self.layout(c, v_lit)
        if layout != self.layout(derived, v):
            raise Refused(
                f"model_config.yaml describes a {v_lit.arch} model, config.json a {v.arch}",
                "drop model_config.yaml to derive it from config.json, or fix it",
            )
        ours, theirs = c.arch(), derived.arch()
        for key in ours:
            if ours[key] != theirs[key]:
                raise Refused(
                    f"model_config.yaml and config.json describe different models: {key} is {ours[key]!r:.40} "
                    f"in model_config.yaml, {theirs[key]!r:.40} from config.json",
                    "drop model_config.yaml to derive it from config.json, or fix it",
                )
        tied = self.view(hf, v).flag("tie_word_embeddings")
        return plan(
            units(c, layout, tied, tensors), tensors, src, sink, "lit",
            side="Hugging Face", arch=v.arch, n_layer=c.n_layer, buffers=layout.buffers,
        )  # fmt: skip

    # -- helpers for lit_config ---------------------------------------------------------------------

    @staticmethod
    def lit_sizes(h: HfView, name: str, hf_config: Mapping[str, str], **fields: Any) -> dict[str, Any]:
        """A full LitGPT config: LitGPT's defaults, the sizes every config.json gives the same way, ``fields``."""
        n_head = h.int("num_attention_heads", MAX_HEADS)
        hidden, vocab = h.int("hidden_size"), h.int("vocab_size")
        return {
            **LIT_DEFAULTS,
            "name": name,
            "hf_config": dict(hf_config),
            "block_size": h.int("max_position_embeddings"),
            "n_layer": h.int("num_hidden_layers", MAX_LAYERS),
            "n_embd": hidden,
            "vocab_size": vocab,
            "padded_vocab_size": vocab,
            "n_head": n_head,
            "head_size": hidden // n_head,
            "n_query_groups": n_head,
            **fields,
        }

    def check_lit_config(self, out: dict[str, Any]) -> dict[str, Any]:
        """Self-check of ``lit_config``: LitGPT takes the result back to this family (a plugin bug otherwise)."""
        c, _ = self.model(out, "the config derived from config.json")
        if c.route != hf_route(c.name, c.mlp) or not self.matches_lit(out):
            raise Unsupported(f"converted LitGPT name {c.name!r} routes elsewhere in LitGPT's converters (plugin bug)")
        return out
