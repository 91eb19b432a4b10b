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
from ckpt_tool.io.sidefiles import read_json, read_text

HYPERPARAMETERS = "hyperparameters.yaml"
MODEL_CONFIG = "model_config.yaml"
LEGACY_CONFIG = "lit_config.json"  # before 2024-03-12 (formats.md §2.2)

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

    text = read_text(path, "a LitGPT config")
    try:
        data = yaml.safe_load(text)
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
    return _mapping(path, data)


def read_json_mapping(path: Path) -> dict[str, Any]:
    """Parse a JSON file that must hold an object (legacy ``lit_config.json``)."""
    return _mapping(path, read_json(path, "a LitGPT config"))


def read_hyperparameters(directory: Path) -> dict[str, Any] | None:
    """``hyperparameters.yaml`` of a checkpoint folder (the recorded command line), or None."""
    p = directory / HYPERPARAMETERS
    return read_yaml_mapping(p) if p.is_file() else None


def read_model_config(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The model config and the file it came from: ``model_config.yaml``, else legacy ``lit_config.json``."""
    p = directory / MODEL_CONFIG
    if p.is_file():
        return read_yaml_mapping(p), MODEL_CONFIG
    p = directory / LEGACY_CONFIG
    if p.is_file():
        return read_json_mapping(p), LEGACY_CONFIG
    return None, None


def positive_int(value: Any) -> int | None:
    """``value`` if it is a positive int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def qkv_sizes(config: dict[str, Any] | None) -> tuple[int, int, int] | None:
    """Rows of q, k and v in the fused ``attn.qkv`` weight (``Geometry``), or None when the config lacks
    the head geometry or holds unusable values (formats.md §2.3)."""
    from ckpt_tool_lit.geometry import Geometry

    geo = Geometry.maybe(config)
    return geo.qkv_sizes if geo else None
