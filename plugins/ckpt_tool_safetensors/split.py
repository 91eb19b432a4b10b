"""Tied weights of Hugging Face models: which copy ``save_pretrained`` leaves out.

``torch.save`` of a model whose output head is tied to its input embeddings
stores one storage under two names; safetensors cannot. transformers'
``save_pretrained`` (``remove_tied_weights_from_state_dict``) keeps the source
of the tie — the input embedding — and drops the tied target, and
``from_pretrained`` ties it back, but only when the config ties the
embeddings. So a duplicate is left out only when ``config.json`` says
``"tie_word_embeddings": true`` and the pair is an input embedding and one other
tensor; anything else stays unresolved (and ``split`` refuses it).
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpt_tool.model import CheckpointInfo
from ckpt_tool_safetensors.detect import read_config

# the source side of transformers' _tied_weights_keys: the input embedding of the architecture
_INPUT_EMBEDDING = re.compile(
    r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings|shared|embeddings\.word_embeddings)\.weight$"
)


def tied_duplicates(source: CheckpointInfo, groups: list[list[str]]) -> list[str] | None:
    """The names ``save_pretrained`` drops from ``groups`` (lists of names sharing one storage), or None."""
    details = source.details or {}
    config = details.get("config")
    if config is None and details.get("dir"):
        config = read_config(Path(details["dir"]))
    if not isinstance(config, dict) or config.get("tie_word_embeddings") is not True:
        return None
    drop: list[str] = []
    for names in groups:
        if len(names) != 2:
            continue
        sources = [n for n in names if _INPUT_EMBEDDING.search(n)]
        if len(sources) == 1:
            drop += [n for n in names if n != sources[0]]
    return drop or None
