"""Read the small side files of a LitGPT checkpoint safely.

``hyperparameters.yaml`` and ``model_config.yaml`` arrive with checkpoints
downloaded from strangers, and ``yaml.load`` with the default loader can build
arbitrary Python objects (``!!python/object/apply``). Everything here goes
through ``yaml.safe_load`` / ``json.loads`` and maps every parse problem to
``InvalidFile`` so the CLI prints one clear line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_tool.errors import InvalidFile
from ckpt_tool.io.regular import is_regular
from ckpt_tool.io.sidefiles import read_json, read_text
from ckpt_tool.limits import MAX_LAYERS, MAX_YAML_BYTES, MAX_YAML_NODES

HYPERPARAMETERS = "hyperparameters.yaml"
MODEL_CONFIG = "model_config.yaml"
LEGACY_CONFIG = "lit_config.json"  # before 2024-03-12 (formats.md §2.2)
#: What ``litgpt.utils.copy_config_files`` copies beside the weights it writes (0.5.13), in its order.
COPY_CONFIG_FILES = (
    "config.json", "generation_config.json", MODEL_CONFIG, "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
)  # fmt: skip


class _Refused(Exception):
    """Raised inside the YAML composer; turned into InvalidFile with the file name."""


def _loader(text: str) -> Any:
    """A ``SafeLoader`` that refuses aliases and counts nodes while composing.

    PyYAML's safe loader resolves an alias to the *same* object, so "billion laughs" costs little
    memory at load time, but every consumer that walks the result (``json.dumps``, comparisons, a
    copy into a migrated config) pays the exponential expansion. LitGPT never writes anchors.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _Refused(f"YAML alias *{event.anchor} at line {event.start_mark.line + 1}")
            Loader.nodes += 1
            if Loader.nodes > MAX_YAML_NODES:
                raise _Refused(f"more than {MAX_YAML_NODES} YAML nodes")
            return super().compose_node(parent, index)

    return Loader(text)

def _mapping(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidFile(
            f"{path}: expected a mapping of settings, found {type(data).__name__}",
            "the file is damaged or not a LitGPT config; restore it from the training run",
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise InvalidFile(f"{path}: setting names must be strings, found {bad[0]!r}")
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping (safe loader only).

    Raises:
        InvalidFile: unreadable, invalid YAML, a Python-object tag, or not a mapping.
    """
    import yaml  # only when a YAML file is actually read (keeps inspect of a bare .pth lean)

    text = read_text(path, "a LitGPT config", MAX_YAML_BYTES)
    loader = _loader(text)
    try:
        data = loader.get_single_data()
    except _Refused as exc:
        raise InvalidFile(
            f"{path}: refusing {exc} (limit: plain YAML without anchors/aliases, {MAX_YAML_NODES} nodes)",
            "LitGPT writes plain YAML; a file with aliases can expand exponentially",
        ) from None
    except yaml.constructor.ConstructorError as exc:
        tag = getattr(exc, "problem", "") or str(exc)
        raise InvalidFile(
            f"{path}: refusing YAML tag ({' '.join(str(tag).split())}): only plain YAML is read",
            "LitGPT writes plain YAML; python/object tags can run code, so this file may be malicious",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InvalidFile(f"{path}: invalid YAML{where} ({problem})", "fix or restore the file") from None
    except RecursionError:
        raise InvalidFile(f"{path}: YAML nests too deeply") from None
    finally:
        loader.dispose()
    return _mapping(path, data)


def read_json_mapping(path: Path) -> dict[str, Any]:
    """Parse a JSON file that must hold an object (legacy ``lit_config.json``)."""
    return _mapping(path, read_json(path, "a LitGPT config"))


def read_hyperparameters(directory: Path) -> dict[str, Any] | None:
    """``hyperparameters.yaml`` of a checkpoint folder (the recorded command line), or None."""
    p = directory / HYPERPARAMETERS
    return read_yaml_mapping(p) if is_regular(p) else None


def read_model_config(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The model config and the file it came from: ``model_config.yaml``, else legacy ``lit_config.json``."""
    p = directory / MODEL_CONFIG
    if is_regular(p):
        return read_yaml_mapping(p), MODEL_CONFIG
    p = directory / LEGACY_CONFIG
    if is_regular(p):
        return read_json_mapping(p), LEGACY_CONFIG
    return None, None


def layer_count(value: Any, what: str = "n_layer") -> int:
    """A layer/head count from a config, bounded (``n_layer: 1e9`` would build gigabyte lists).

    Raises:
        ValueError: not a positive integer, or above ``MAX_LAYERS``.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, not {value!r:.40}")
    if value > MAX_LAYERS:
        raise ValueError(f"{what}={value} is implausible (limit {MAX_LAYERS})")
    return value


def positive_int(value: Any) -> int | None:
    """``value`` if it is a positive int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def qkv_sizes(config: dict[str, Any] | None) -> tuple[int, int, int] | None:
    """Rows of q, k and v in the fused ``attn.qkv`` weight (``Geometry``), or None when the config lacks
    the head geometry or holds unusable values (formats.md §2.3)."""
    from ckpt_tool_lit.geometry import Geometry

    geo = Geometry.maybe(config)
    return geo.qkv_sizes if geo else None
