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
_failed: dict[str, tuple[str, str, str]] = {}  # name -> (source, module, why it was left out)


@dataclass
class PluginRecord:
    name: str
    source: str  # "built-in" | "installed" | "registered"
    module: str
    version: str | None
    hooks: list[str]
    status: str = "loaded"  # "loaded" | why it was left out


def _allowed() -> set[str] | None:
    raw = os.environ.get(ENV_PLUGINS)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """Register ``plugin``, checking every hook implementation against the specs.

    Returns why it was refused (an implementation of an unknown hook, e.g. a
    misspelt ``ckpt_detekt``, or arguments that are not the spec's), or None.
    A refused plugin is unregistered again: a half-registered plugin would
    answer some hooks and silently miss others.
    """
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        return str(exc).strip() or type(exc).__name__
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        return str(exc).strip() or type(exc).__name__
    return None


def get_plugin_manager() -> pluggy.PluginManager:
    """Create (once) the manager with every allowed plugin registered.

    A plugin that fails to import or does not match the hook specs is left
    out with one warning on stderr (and listed by ``ckpt-tool plugins``):
    a broken third-party package must not break every command.
    """
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
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        source = "built-in" if dist_name == DIST_NAME else "installed"
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import-time failure of someone else's code
            why = f"failed to load ({type(exc).__name__}: {exc})"
            _failed[ep.name] = (source, ep.value, why)
            _warn(f"plugin {ep.name!r} ({ep.value}) {why}; continuing without it")
            continue
        refused = _register(pm, plugin, ep.name)
        if refused is not None:
            why = f"does not match the hook specs: {' '.join(refused.split())}"
            _failed[ep.name] = (source, ep.value, why)
            _warn(f"plugin {ep.name!r} ({ep.value}) {why}; continuing without it")
            continue
        _sources[ep.name] = source
        if dist is not None:
            _sources[ep.name + "\0version"] = dist.version
    if os.environ.get(ENV_TRACE):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    _pm = pm
    return pm


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object at run time (tests, embedding applications), validated like entry points.

    Raises:
        ValueError: the plugin implements a hook that does not exist or with the wrong arguments.
    """
    refused = _register(get_plugin_manager(), plugin, name)
    if refused is not None:
        raise ValueError(f"plugin {name!r} does not match the hook specs: {refused}")


def reset_plugin_manager() -> None:
    """Forget the manager (tests use this after changing the environment)."""
    global _pm
    _pm = None
    _sources.clear()
    _failed.clear()


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
    for name, (source, module, why) in _failed.items():
        records.append(PluginRecord(name=name, source=source, module=module, version=None, hooks=[], status=why))
    return sorted(records, key=lambda r: r.name)
