"""The plugin manager: built-in and installed plugins, loaded through one entry-point group.

``CKPT_TOOL_PLUGINS`` restricts loading: a comma-separated list of plugin
names (entry-point names, e.g. ``lit,peft``) to load; empty loads none.
``CKPT_TOOL_TRACE=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import metadata

import pluggy

from ckpt_tool import hookspecs

ENTRY_POINT_GROUP = "ckpt_tool"
ENV_PLUGINS = "CKPT_TOOL_PLUGINS"
ENV_TRACE = "CKPT_TOOL_TRACE"
DIST_NAME = "ckpt-tool"

_pm: pluggy.PluginManager | None = None
_sources: dict[str, str] = {}


@dataclass
class PluginRecord:
    name: str
    source: str  # "built-in" | "installed" | "registered"
    module: str
    version: str | None
    hooks: list[str]


def _allowed() -> set[str] | None:
    raw = os.environ.get(ENV_PLUGINS)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """Create (once) the manager with every allowed plugin registered."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("ckpt_tool")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        _sources[ep.name] = "built-in" if dist_name == DIST_NAME else "installed"
        if dist is not None:
            _sources[ep.name + "\0version"] = dist.version
    if os.environ.get(ENV_TRACE):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    _pm = pm
    return pm


def reset_plugin_manager() -> None:
    """Forget the manager (tests use this after changing the environment)."""
    global _pm
    _pm = None
    _sources.clear()


def list_plugins() -> list[PluginRecord]:
    pm = get_plugin_manager()
    records = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(impl for impl in (h.name for h in pm.get_hookcallers(plugin) or []))
        records.append(
            PluginRecord(
                name=name,
                source=_sources.get(name, "registered"),
                module=getattr(plugin, "__name__", type(plugin).__name__),
                version=_sources.get(name + "\0version"),
                hooks=hooks,
            )
        )
    return sorted(records, key=lambda r: r.name)
