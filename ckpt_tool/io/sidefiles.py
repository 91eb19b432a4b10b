"""Read the small text files that travel with checkpoints (configs, indexes) as hostile input.

``adapter_config.json``, ``config.json``, shard indexes and LitGPT's YAML/JSON
configs come with checkpoints downloaded from strangers. Every reader refuses
an absurd size before reading, and turns every read or parse failure into one
``InvalidFile`` line that names the file and what it was supposed to be,
instead of a traceback. Parsing YAML (safe loader only) stays with the LitGPT
plugin, the one format that uses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, InvalidFile
from ckpt_tool.io.regular import read_regular
from ckpt_tool.limits import MAX_CONFIG_BYTES, MAX_INDEX_BYTES

__all__ = ["MAX_CONFIG_BYTES", "MAX_INDEX_BYTES", "read_json", "read_text"]


def read_text(path: Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of ``path`` (``what`` names it in errors, e.g. "the model config")."""
    try:
        data = read_regular(path, max_bytes, what)  # never a FIFO or /dev/zero: they would block or never end
    except CkptError as exc:
        if isinstance(exc, InvalidFile):
            raise
        raise InvalidFile(f"{path}: cannot read {what} ({exc.message})") from None
    except OSError as exc:
        raise InvalidFile(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"{path}: {what} is not UTF-8 text ({exc.reason})") from None


def read_json(path: Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The parsed JSON of ``path``, any JSON value (callers check the shape they need)."""
    text = read_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidFile(f"{path}: {what} is not valid JSON ({exc})", f"fix or regenerate {path.name}") from None


#: Files that make a checkpoint directory usable beyond its weights (tokenizer, chat template, generation
#: defaults), as transformers' tokenizers and LitGPT's ``copy_config_files`` look for them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
GENERATION_CONFIG = "generation_config.json"


def travelling_files(directory: Path, names: tuple[str, ...] = (*TOKENIZER_FILES, GENERATION_CONFIG)) -> dict[str, Path]:
    """The tokenizer / generation files present in ``directory`` (regular files only), by name."""
    out: dict[str, Path] = {}
    for name in names:
        p = directory / name
        if p.is_file() and not p.is_symlink():
            out[name] = p
    return out
