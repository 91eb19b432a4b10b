"""The CLI's promises that hold for every command: exit codes, global flags, closed pipes, plugin isolation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_helpers import run_subprocess

MAGIC = b"BADPLUGIN"


def _fake_site(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    site = tmp_path / f"site-{name}"
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ckpt_tool]\n{name} = {name}_mod\n")
    (site / f"{name}_mod.py").write_text(textwrap.dedent(source))
    return {"PYTHONPATH": str(site)}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    f = tmp_path / "m.pth"
    torch.save({f"transformer.h.{i}.w": torch.ones(2) for i in (0, 1, 2, 10, 11)}, f)
    return f


def test_plugin_that_fails_to_import_is_left_out_with_a_warning(tmp_path, model_file):
    env = _fake_site(tmp_path, "broken", "raise ImportError('needs libfoo')\n")
    res = run_subprocess("inspect", model_file, env=env)
    assert res.code == 0, res.stderr
    assert "warning: plugin 'broken'" in res.stderr and "needs libfoo" in res.stderr and "Traceback" not in res.stderr
    res = run_subprocess("plugins", "--json", env=env)
    status = {p["name"]: p["status"] for p in json.loads(res.stdout)["plugins"]}
    assert status["broken"].startswith("failed to load") and status["lit"] == "loaded"


def test_plugin_with_a_misspelt_hook_is_refused(tmp_path, model_file):
    env = _fake_site(
        tmp_path,
        "typo",
        """
        from ckpt_tool import hookimpl

        @hookimpl
        def ckpt_detekt(path, probe):
            return None
        """,
    )
    res = run_subprocess("inspect", model_file, env=env)
    assert res.code == 0 and "warning: plugin 'typo'" in res.stderr and "ckpt_detekt" in res.stderr
    res = run_subprocess("plugins", env=env)
    assert "typo" in res.stdout and "does not match the hook specs" in res.stdout


def test_plugin_hook_with_wrong_arguments_is_refused(tmp_path, model_file):
    env = _fake_site(
        tmp_path,
        "wrongargs",
        """
        from ckpt_tool import hookimpl

        @hookimpl
        def ckpt_detect(path, probe, colour):
            return None
        """,
    )
    res = run_subprocess("inspect", model_file, env=env)
    assert res.code == 0 and "warning: plugin 'wrongargs'" in res.stderr


@pytest.mark.parametrize("cmd", [["plugins", "--json"], ["--help"], ["inspect", "{f}", "--tensors"]])
def test_closed_stdout_exits_zero_without_a_message(cmd, model_file):
    args = [a.replace("{f}", str(model_file)) for a in cmd]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt_tool", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| true`: the reader is gone before the first write
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == 0 and err == ""


def test_global_flags_in_any_position(cli, model_file):
    res = cli("inspect", model_file, "--quiet")
    assert res.code == 0 and res.stdout == ""
    res = cli("--quiet", "inspect", model_file, "--json")
    assert res.code == 0 and json.loads(res.stdout)["tensors"] == 5  # asked-for data still prints
    res = cli("inspect", model_file / "nope", "--debug")
    assert res.code == 3 and "Traceback" in res.stderr and res.stderr.splitlines()[-1].startswith("error: ")


def test_bad_option_values_exit_2(cli, tmp_path, model_file):
    res = cli("convert", model_file, "--to", "safetensors", "--out", tmp_path / "o.safetensors", "--dtype", "fp7")
    assert res.code == 2 and "unknown --dtype" in res.stderr
    for size in ("inf", "nan", "1e400", "-5GB", "lots"):
        res = cli("convert", model_file, "--to", "safetensors", "--out", tmp_path / "o.safetensors", "--max-shard-size", size)
        assert res.code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr, (size, res.stderr)
    res = cli("convert", model_file, "--to", "gguf", "--out", tmp_path / "x")
    assert res.code == 2
    assert not (tmp_path / "o.safetensors").exists()


def test_filter_says_totals_are_filtered_and_sorts_numerically(cli, model_file):
    res = cli("inspect", model_file, "--tensors", "--filter", "transformer.h.1*")
    assert res.code == 0, res.stderr
    assert "filtered: 3 of 5 tensors" in res.stdout
    names = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("transformer.h.")]
    assert names == ["transformer.h.1.w", "transformer.h.10.w", "transformer.h.11.w"]
    res = cli("inspect", model_file, "--tensors")
    names = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("transformer.h.")]
    assert names == [f"transformer.h.{i}.w" for i in (0, 1, 2, 10, 11)]
    res = cli("inspect", model_file, "--json", "--filter", "*.h.1*")
    assert json.loads(res.stdout)["metadata"]["filter"] == {"pattern": "*.h.1*", "matched": 3, "of": 5}
    res = cli("inspect", model_file, "--filter", "*lora_A*")
    assert res.code == 3 and "no tensor name matches" in res.stderr


def test_shell_completion_is_offered(cli):
    res = cli("--help")
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout


def test_multi_line_errors_print_as_lines():
    from ckpt_tool.errors import Refused

    text = Refused("cannot merge: 2 mismatches:\n  - a\n  - b", "check --base").render()
    assert text.splitlines() == ["error: cannot merge: 2 mismatches:", "  - a", "  - b", "\u2014 check --base"]
    assert Refused("one line", "do this").render() == "error: one line \u2014 do this"
