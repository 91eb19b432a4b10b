"""Find a Hugging Face Hub model in the local cache, offline, exactly where ``huggingface_hub`` keeps it.

A PEFT adapter records its base as ``base_model_name_or_path``, nearly always a
Hub id (``meta-llama/Llama-3.2-1B``). ``from_pretrained`` would look it up in
the cache (``<cache>/models--org--name/refs/<revision>`` holds a commit hash,
``snapshots/<hash>/`` the files) and download what is missing; ckpt-tool only
looks. It never downloads and never opens a connection: the lookup is
``huggingface_hub.try_to_load_from_cache``, which reads the cache directory and
nothing else.

The cache directory is computed from the environment *at call time* with
huggingface_hub's own precedence (``HF_HUB_CACHE``, then the legacy
``HUGGINGFACE_HUB_CACHE``, then ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``,
``~/.cache/huggingface/hub``; ``~`` and ``$VARS`` expanded), because
``huggingface_hub.constants`` freezes it when first imported. A test pins the
two against each other in fresh interpreters.

The id and revision come from a file of unknown origin: both are validated
before they are turned into paths (a revision of ``../../x`` would otherwise
make the lookup read a file outside the cache).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}$")


def cache_dir() -> Path:
    """The Hub cache directory huggingface_hub would use in this environment."""
    env = os.environ
    default_home = os.path.join(os.path.expanduser("~"), ".cache")
    hf_home = os.path.expandvars(
        os.path.expanduser(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", default_home), "huggingface")))
    )
    legacy = env.get("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))
    return Path(os.path.expandvars(os.path.expanduser(env.get("HF_HUB_CACHE", legacy))))


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a valid Hub model id (``org/name`` or ``name``), by huggingface_hub's rules."""
    if not isinstance(name, str) or not name or len(name) > 200 or os.path.isabs(name) or "\\" in name:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return ".." not in name.split("/")


def valid_revision(revision: object) -> bool:
    """A branch, tag or commit name that stays a single path below ``refs/`` / ``snapshots/``."""
    return isinstance(revision, str) and bool(_REVISION.match(revision)) and ".." not in revision.split("/")


@dataclass(frozen=True)
class Snapshot:
    """A cached model: ``path`` is ``<cache>/models--org--name/snapshots/<commit>``."""

    repo_id: str
    revision: str
    commit: str
    path: Path
    cache: Path


def resolve(repo_id: str, revision: str | None = None) -> Snapshot | None:
    """The cached snapshot of ``repo_id`` at ``revision`` (default ``main``) that holds a ``config.json``,
    or None (not a valid id, not cached, or cached without its config). Never touches the network."""
    revision = revision or "main"
    if not is_repo_id(repo_id) or not valid_revision(revision):
        return None
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir()
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache), revision=revision)
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return Snapshot(repo_id, revision, snapshot.name, snapshot, cache)


def repo_root(directory: str | os.PathLike[str]) -> Path | None:
    """``<cache>/models--org--name`` when ``directory`` is one of its snapshots (whose files are symlinks
    into that folder's ``blobs/``), else None."""
    d = Path(directory)
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith("models--"):
        return d.parent.parent
    return None
