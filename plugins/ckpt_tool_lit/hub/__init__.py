"""LitGPT ↔ Hugging Face transformers, per model family, as transform steps (no tensor bytes read).

LitGPT's own converters (``litgpt/scripts/convert_lit_checkpoint.py`` and
``convert_hf_checkpoint.py``, 0.5.13) load the whole model and pick a family by
``config.name`` (falcon, Gemma-2/3, phi, Qwen2.5, Qwen3, else by
``mlp_class_name``: LLaMA family or GPT-NeoX). Here each family is one module
exposing ``FAMILY``, an object with the ``Family`` interface below; the steps it
returns are executed by the streaming engine (one tensor group at a time), and
tests run them in memory (``ckpt_tool.ops.transform.evaluate``) against the
peer converters, bit for bit.

Names: ``lit`` tensors are LitGPT ``GPT`` state-dict names (``transformer.h.0.attn.qkv.weight``);
``hf`` tensors are transformers state-dict names exactly as ``save_pretrained`` writes them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

from ckpt_tool.errors import Unsupported
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Step

#: Family modules, in the order LitGPT's converters test them (most specific first): falcon, gemma, phi,
#: qwen are claimed by name before LitGPT's fallbacks; llama by MLP class; neox takes what is left.
FAMILY_MODULES: tuple[str, ...] = (
    "ckpt_tool_lit.hub.falcon",
    "ckpt_tool_lit.hub.gemma",
    "ckpt_tool_lit.hub.phi",
    "ckpt_tool_lit.hub.qwen",
    "ckpt_tool_lit.hub.llama",
    "ckpt_tool_lit.hub.neox",
)


class Family(Protocol):
    """One model family's conventions. ``cfg`` is a LitGPT model config dict (``model_config.yaml``),
    ``hf`` a ``config.json`` dict, ``tensors`` the source's tensors by name (``TensorInfo``: dtype, shape)."""

    name: str  # "llama", "gemma", "neox", ...

    def matches_lit(self, cfg: Mapping[str, Any]) -> bool:
        """Whether LitGPT's converter would treat this config as this family (by ``name``, ``mlp_class_name``)."""

    def matches_hf(self, hf: Mapping[str, Any]) -> bool:
        """Whether a ``config.json`` (``model_type`` / ``architectures``) is this family."""

    def hf_config(
        self,
        cfg: Mapping[str, Any],
        *,
        tie: bool | None = None,
        base: Mapping[str, Any] | None = None,
        dtype: str | None = None,
    ) -> dict[str, Any]:
        """The ``config.json`` transformers needs to load the converted model (``AutoModelForCausalLM``).

        ``tie``: tie the head to the embeddings (None: as ``base`` says, else the family's default);
        ``base``: the model's original ``config.json`` (LitGPT's download keeps it beside ``lit_model.pth``):
        token ids are copied from it, and one describing another model is refused; ``dtype``: the
        safetensors dtype the weights are written in (``torch_dtype`` / ``dtype``)."""

    def lit_config(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        """A LitGPT ``model_config.yaml`` from ``config.json`` such that ``litgpt.GPT(Config(**it))`` is the same model."""

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
        """Steps reading input ``src`` (lit names) and writing sink ``sink`` (hf names), bit-identical to
        ``convert_lit_checkpoint``; ``tie`` / ``base`` as given to ``hf_config`` (they decide whether
        ``lm_head.weight`` is written). Raise ``Unsupported`` / ``InvalidFile`` for tensors it cannot place."""

    def to_lit_steps(
        self, cfg: Mapping[str, Any], hf: Mapping[str, Any], tensors: Mapping[str, TensorInfo], src: str, sink: str
    ) -> list[Step]:
        """Steps reading input ``src`` (hf names) and writing sink ``sink`` (lit names), bit-identical to
        ``convert_hf_checkpoint``; ``cfg`` is ``lit_config(hf)`` (or the user's model_config.yaml)."""


def families() -> list[Family]:
    return [importlib.import_module(m).FAMILY for m in FAMILY_MODULES]


def family_for_lit(cfg: Mapping[str, Any]) -> Family:
    for fam in families():
        if fam.matches_lit(cfg):
            return fam
    raise Unsupported(
        f"no LitGPT ↔ Hugging Face conversion for model {cfg.get('name')!r} "
        f"(mlp_class_name {cfg.get('mlp_class_name')!r})",
        "supported families: " + ", ".join(f.name for f in families()),
    )


def family_for_hf(hf: Mapping[str, Any]) -> Family:
    for fam in families():
        if fam.matches_hf(hf):
            return fam
    raise Unsupported(
        f"no Hugging Face → LitGPT conversion for model_type {hf.get('model_type')!r} "
        f"(architectures {hf.get('architectures')!r})",
        "supported families: " + ", ".join(f.name for f in families()),
    )
