"""Merges that fail must leave nothing that looks usable, and nothing large that nobody removes.

Fast lane (torch only): the checkpoints are LitGPT-shaped state dicts written with ``torch.save`` and the
YAML files LitGPT writes, merged through the real CLI.

* side files (config.json, model_config.yaml...) are published only after the weights, so a failure
  while writing or fsyncing the weights (ENOSPC) never leaves a config without its weights;
* an output path that is a directory is refused before anything is written, even with --force;
* a SIGKILLed merge leaves its temp file; the next merge into that directory removes it, but never a
  temp of a live process, a symlink, a directory, or a name it did not make;
* a real full filesystem (tmpfs, when mountable) gives exit 9 and an empty output directory;
* a malformed model config is an InvalidFile (exit 4), never an internal error.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from ckpt_tool.io import atomic

N_EMBD, N_HEAD, GROUPS, VOCAB, R = 16, 4, 2, 32, 2
HS = N_EMBD // N_HEAD
QKV_ROWS = (N_HEAD + 2 * GROUPS) * HS


def _config(**extra: object) -> dict:
    cfg = {
        "name": "tiny", "block_size": 16, "vocab_size": VOCAB, "padded_vocab_size": VOCAB, "n_layer": 1,
        "n_head": N_HEAD, "n_query_groups": GROUPS, "n_embd": N_EMBD, "head_size": HS, "bias": False,
        "mlp_class_name": "LLaMAMLP", "intermediate_size": 24, "norm_class_name": "RMSNorm",
        "rotary_percentage": 1.0, "parallel_residual": False,
    }
    cfg.update(extra)
    return cfg


def _t(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_lit(tmp: Path, rows: int = 4096, qkv: bool = False, **cfg_extra: object) -> tuple[Path, Path]:
    """(base dir, final dir) of a tiny LitGPT LoRA run on lm_head (and attn.qkv q+v with ``qkv``).

    ``rows`` sets the embedding / lm_head size so the model can be made larger than a small filesystem.
    """
    base, final = tmp / "base", tmp / "out" / "final"
    base.mkdir(parents=True)
    final.mkdir(parents=True)
    p = "transformer.h.0."
    sd = {
        "transformer.wte.weight": _t(rows, N_EMBD, seed=1),
        p + "norm_1.weight": _t(N_EMBD, seed=2),
        p + "attn.qkv.weight": _t(QKV_ROWS, N_EMBD, seed=3),
        p + "attn.proj.weight": _t(N_EMBD, N_EMBD, seed=4),
        p + "norm_2.weight": _t(N_EMBD, seed=5),
        p + "mlp.fc_1.weight": _t(24, N_EMBD, seed=12),
        p + "mlp.fc_2.weight": _t(24, N_EMBD, seed=13),
        p + "mlp.proj.weight": _t(N_EMBD, 24, seed=14),
        "transformer.ln_f.weight": _t(N_EMBD, seed=6),
        "lm_head.weight": _t(rows, N_EMBD, seed=7),
    }
    torch.save(sd, base / "lit_model.pth")
    cfg = _config(vocab_size=rows, padded_vocab_size=rows, **cfg_extra)
    for d in (base, final):
        (d / "model_config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "tokenizer.json").write_text("{}")
        (d / "tokenizer_config.json").write_text("{}")
    lora = {"lm_head.lora_A": _t(R, N_EMBD, seed=8), "lm_head.lora_B": _t(rows, R, seed=9)}
    if qkv:
        lora[p + "attn.qkv.lora_A"] = _t(2 * R, N_EMBD, seed=10)
        lora[p + "attn.qkv.lora_B"] = _t((N_HEAD + GROUPS) * HS, R, seed=11)
    torch.save({"model": lora}, final / "lit_model.pth.lora")
    hp = {
        "checkpoint_dir": str(base), "precision": "32-true", "lora_r": R, "lora_alpha": 4,
        "lora_query": qkv, "lora_key": False, "lora_value": qkv, "lora_projection": False, "lora_mlp": False,
        "lora_head": True,
    }
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    return base, final


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------ side files after the weights


def test_enospc_at_fsync_of_the_weights_publishes_no_side_file(tmp_path, cli, monkeypatch):
    """Delayed allocation reports a full disk at fsync: the weights fail, and so must config & co."""
    base, final = make_lit(tmp_path)
    out = tmp_path / "m"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.fstat(fd).st_size > 100_000:  # the weights temp, not a side file or a directory
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = cli("merge", final, "--out", out)
    assert res.code == 9, res.stderr
    assert "No space left" in res.stderr and "Traceback" not in res.stderr
    assert _listing(out) == []  # no model_config.yaml / tokenizer / hyperparameters without weights
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert cli("merge", final, "--out", out, "--quiet").code == 0
    assert {"lit_model.pth", "model_config.yaml", "hyperparameters.yaml"} <= set(_listing(out))


def test_enospc_mid_write_leaves_nothing(tmp_path, cli, monkeypatch):
    from ckpt_tool.io import writers

    base, final = make_lit(tmp_path)
    out = tmp_path / "m"
    calls = {"n": 0}
    real_pwrite = os.pwrite

    def pwrite(fd: int, data, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writers.os, "pwrite", pwrite)
    monkeypatch.delattr(writers.os, "copy_file_range", raising=False)  # unchanged tensors go through pwrite too
    res = cli("merge", final, "--out", out, "--to", "hf")
    assert res.code == 9, res.stderr
    assert _listing(out) == []


def test_side_file_failure_after_staging_leaves_nothing(tmp_path, cli, monkeypatch):
    """A failing side-file copy (staged before the weights) stops the merge before any weight is written."""
    base, final = make_lit(tmp_path)
    out = tmp_path / "m"
    import ckpt_tool.ops.engine as engine_mod

    real = engine_mod._write_side

    def stage(stack, dest, side):
        if Path(dest).name == "tokenizer_config.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        return real(stack, dest, side)

    monkeypatch.setattr(engine_mod, "_write_side", stage)
    res = cli("merge", final, "--out", out)
    assert res.code == 9, res.stderr
    assert _listing(out) == []


@pytest.mark.parametrize("fmt, weights", [("lit", "lit_model.pth"), ("hf", "model.safetensors")])
def test_output_weights_path_that_is_a_directory_is_refused_first(tmp_path, cli, fmt, weights):
    base, final = make_lit(tmp_path)
    out = tmp_path / "m"
    (out / weights).mkdir(parents=True)
    (out / weights / "keep").write_text("x")
    res = cli("merge", final, "--out", out, "--to", fmt, "--force")
    assert res.code == 6, res.stderr
    assert "not a regular file" in res.stderr
    assert _listing(out) == [weights]  # no config.json / model_config.yaml published beside it
    assert (out / weights / "keep").read_text() == "x"


# --------------------------------------------------------------------------------- stale temps


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import ckpt_tool_lit.merge as lm
    from ckpt_tool.cli import main
    real = lm._linear_change
    def slow(*a, **k):
        change = real(*a, **k)
        def run(w, load):
            print("computing", flush=True)
            time.sleep(60)
            return change(w, load)
        return run
    lm._linear_change = slow
    main(sys.argv[1:])
    """
)


def test_sigkilled_merge_temp_is_cleaned_by_the_next_run(tmp_path, cli):
    base, final = make_lit(tmp_path, rows=8192)
    out = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, "merge", str(final), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "computing\n"  # wte (copied) is written, lm_head is being merged
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    temps = [p for p in out.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]
    big = [p for p in temps if p.stat().st_size > 100_000]
    assert big, [(p.name, p.stat().st_size) for p in temps]  # the kill left the large weights temp
    assert all(f"-{proc.pid}-" in p.name for p in temps)  # named after the dead process

    # things that look like temps but must survive: a live process's, a symlink, a directory, a foreign name
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = out / f"{atomic.temp_prefix().rsplit('-', 2)[0]}-{sleeper.pid}-live"
        live.write_bytes(b"busy")
        victim = tmp_path / "victim"
        victim.write_text("keep me")
        link = out / f"{atomic.temp_prefix().rsplit('-', 2)[0]}-{proc.pid}-link"
        link.symlink_to(victim)
        folder = out / f"{atomic.temp_prefix().rsplit('-', 2)[0]}-{proc.pid}-dir"
        folder.mkdir()
        old_style = out / f"{atomic.TEMP_PREFIX}abc123"
        old_style.write_bytes(b"unknown owner")

        res = cli("merge", final, "--out", out, "--json")
        assert res.code == 0, res.stderr
        summary = json.loads(res.stdout)
        assert sorted(summary["removed_temp_files"]) == sorted(str(p) for p in temps)
        for p in temps:
            assert not p.exists()
        assert live.exists() and link.is_symlink() and folder.is_dir() and old_style.exists()
        assert victim.read_text() == "keep me"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_temp_rules(tmp_path, monkeypatch):
    machine, boot = atomic.host_token()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert atomic.is_stale_temp(f"{atomic.TEMP_PREFIX}{machine}{boot}-{dead.pid}-x")
    assert not atomic.is_stale_temp(f"{atomic.TEMP_PREFIX}{machine}{boot}-{os.getpid()}-x")  # ourselves
    assert not atomic.is_stale_temp(f"{atomic.TEMP_PREFIX}{machine}{boot}-1-x")  # init is alive
    other_boot = "0" * 8 if boot != "0" * 8 else "1" * 8
    assert atomic.is_stale_temp(f"{atomic.TEMP_PREFIX}{machine}{other_boot}-{os.getpid()}-x")  # before a reboot
    other_machine = "0" * 8 if machine != "0" * 8 else "1" * 8
    assert not atomic.is_stale_temp(f"{atomic.TEMP_PREFIX}{other_machine}{boot}-{dead.pid}-x")  # NFS neighbour
    assert not atomic.is_stale_temp(f"{atomic.TEMP_PREFIX}q1w2e3r4")  # older release: owner unknown
    # our own temps carry the token
    with atomic.atomic_write(tmp_path / "f") as fh:
        names = [p.name for p in tmp_path.iterdir()]
        fh.write(b"x")
    assert any(n.startswith(atomic.temp_prefix()) for n in names)


# ----------------------------------------------------------------------------- a real full disk


def _tmpfs(mnt: Path, options: str):
    """A real tmpfs at ``mnt`` (root on Linux, as in a sandbox), unmounted afterwards; else the test is skipped."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root on Linux to mount a tmpfs")
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs."""
    yield from _tmpfs(tmp_path / "small", "size=1m")


@pytest.mark.parametrize("fmt", ["lit", "hf"])
def test_real_enospc_on_a_small_filesystem(tmp_path, cli, small_fs, fmt):
    base, final = make_lit(tmp_path, rows=16384)  # 2 x 1 MiB fp32 matrices: more than the filesystem holds
    out = small_fs / "m"
    res = cli("merge", final, "--out", out, "--to", fmt)
    assert res.code == 9, res.stderr
    assert "No space left" in res.stderr and "nothing partial was published" in res.stderr
    assert _listing(out) == []
    assert _listing(small_fs) == ["m"]


@pytest.fixture
def read_only_fs(tmp_path):
    """A read-only tmpfs: EROFS even for root."""
    yield from _tmpfs(tmp_path / "ro", "size=1m,ro")


@pytest.mark.parametrize("cmd", [("merge",), ("convert", "--to", "hf")])
def test_read_only_destination_is_an_environment_failure(tmp_path, cli, read_only_fs, cmd):
    """Class: a read-only filesystem is the user's environment (exit 9, one line), not a bug."""
    base, final = make_lit(tmp_path)
    src = final if cmd[0] == "merge" else base
    res = cli(cmd[0], src, *cmd[1:], "--out", read_only_fs)
    assert res.code == 9, res.stderr
    assert "Read-only file system" in res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _listing(read_only_fs) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_permission_denied_creating_the_output_is_an_environment_failure(tmp_path, cli, monkeypatch, code):
    """Tests run as root, where chmod does not deny: the refusal is injected where the temp file is made."""
    import tempfile

    base, final = make_lit(tmp_path)
    out = tmp_path / "m"
    out.mkdir()

    def denied(*a, **k):
        raise OSError(code, os.strerror(code), str(out))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    res = cli("merge", final, "--out", out)
    assert res.code == 9, res.stderr
    assert os.strerror(code) in res.stderr and "internal error" not in res.stderr
    assert _listing(out) == []


# ------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "bad", [{"n_query_groups": "abc"}, {"n_query_groups": 3}, {"n_head": 0}, {"head_size": [4]}]
)
def test_malformed_model_config_is_invalid_file(tmp_path, cli, bad):
    base, final = make_lit(tmp_path, qkv=True, **bad)
    res = cli("merge", final, "--out", tmp_path / "m")
    assert res.code == 4, res.stderr
    assert "internal error" not in res.stderr and "model_config.yaml" in res.stderr
    assert not (tmp_path / "m").exists()
    assert cli("inspect", final).code == 0  # inspect describes it and warns


def test_good_config_still_merges(tmp_path, cli):
    base, final = make_lit(tmp_path, qkv=True)
    res = cli("merge", final, "--out", tmp_path / "m", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["lora"]["modules"] == 2
