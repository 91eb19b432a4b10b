"""The plugin system: built-ins load like third-party plugins, the env var restricts, hooks are documented."""

from __future__ import annotations

import inspect as pyinspect
import json
import textwrap
from pathlib import Path

import pytest
from cli_helpers import run_subprocess

from ckpt_tool import hookimpl, hookspecs
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops.inspect import detect
from ckpt_tool.plugins import get_plugin_manager, list_plugins, reset_plugin_manager

BUILTINS = {"lit", "peft", "safetensors"}
MAGIC = b"FAKECKPT1"


class FakeFormat:
    """A throwaway plugin for a made-up format: a file starting with FAKECKPT1."""

    @hookimpl
    def ckpt_detect(self, path: Path, probe) -> CheckpointInfo | None:
        if path.is_file() and path.read_bytes()[: len(MAGIC)] == MAGIC:
            return CheckpointInfo(path=str(path), format="fake", kind="model", description="made-up format")
        return None


def test_builtins_load_through_entry_points() -> None:
    records = {r.name: r for r in list_plugins()}
    assert BUILTINS <= set(records)
    for name in BUILTINS:
        assert records[name].source == "built-in"
        assert records[name].module == f"ckpt_tool_{name}"
        assert "ckpt_detect" in records[name].hooks


def test_registered_plugin_detects_made_up_format(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(MAGIC + b"\0" * 32)
    pm = get_plugin_manager()
    pm.register(FakeFormat(), name="fake")
    try:
        info = detect(f)
        assert info.format == "fake" and info.description == "made-up format"
        assert "fake" in {r.name for r in list_plugins()}
    finally:
        pm.unregister(name="fake")
    reset_plugin_manager()


def test_env_var_restricts_plugins(monkeypatch) -> None:
    monkeypatch.setenv("CKPT_TOOL_PLUGINS", "peft")
    reset_plugin_manager()
    assert {r.name for r in list_plugins()} == {"peft"}
    monkeypatch.setenv("CKPT_TOOL_PLUGINS", "")
    reset_plugin_manager()
    assert list_plugins() == []


def test_no_plugin_recognises(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("CKPT_TOOL_PLUGINS", "")
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    res = cli("inspect", f)
    assert res.code == 3
    assert res.stderr.startswith("error: ") and "ckpt-tool plugins" in res.stderr


def test_installed_third_party_plugin(tmp_path: Path) -> None:
    """A package installed with an entry point in the ckpt_tool group is found and listed as installed."""
    site = tmp_path / "site"
    (site / "fakefmt_plugin-0.3.dist-info").mkdir(parents=True)
    (site / "fakefmt_plugin-0.3.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakefmt-plugin\nVersion: 0.3\n")
    (site / "fakefmt_plugin-0.3.dist-info" / "entry_points.txt").write_text("[ckpt_tool]\nfakefmt = fakefmt_plugin\n")
    (site / "fakefmt_plugin.py").write_text(textwrap.dedent(f'''
        from ckpt_tool import hookimpl
        from ckpt_tool.model import CheckpointInfo

        @hookimpl
        def ckpt_detect(path, probe):
            if path.is_file() and path.read_bytes()[:9] == {MAGIC!r}:
                return CheckpointInfo(path=str(path), format="fakefmt", kind="model")
    '''))
    f = tmp_path / "w.dat"
    f.write_bytes(MAGIC + b"payload")
    env = {"PYTHONPATH": str(site)}
    res = run_subprocess("plugins", "--json", env=env)
    assert res.code == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert plugins["fakefmt"]["source"] == "installed" and plugins["fakefmt"]["version"] == "0.3"
    assert plugins["fakefmt"]["hooks"] == ["ckpt_detect"]
    res = run_subprocess("inspect", "--json", f, env=env)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["format"] == "fakefmt"
    res = run_subprocess("inspect", "--json", f, env={**env, "CKPT_TOOL_PLUGINS": "lit,peft,safetensors"})
    assert res.code != 0


def test_every_hook_is_documented_and_implemented() -> None:
    specs = [name for name, fn in vars(hookspecs).items() if name.startswith("ckpt_") and callable(fn)]
    assert specs
    implemented = {h for r in list_plugins() for h in r.hooks}
    for name in specs:
        doc = pyinspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 80, f"hook {name} is not documented"
        assert name in implemented, f"no built-in implements {name}"


def test_plugins_command_table_and_json(cli) -> None:
    res = cli("plugins")
    assert res.code == 0 and "built-in" in res.stdout and "ckpt_detect" in res.stdout
    res = cli("plugins", "--json")
    assert {p["name"] for p in json.loads(res.stdout)["plugins"]} >= BUILTINS


@pytest.mark.parametrize("args", [["--help"], ["--version"], []])
def test_cli_basics(cli, args) -> None:
    res = cli(*args)
    assert res.code in (0, 2)
    assert "ckpt-tool" in res.stdout + res.stderr
