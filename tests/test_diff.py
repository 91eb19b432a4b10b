"""``ckpt-tool diff``: identical / different / missing keys / shape and dtype mismatches, exit codes."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from ckpt_tool.errors import EXIT_DIFFER


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g).to(torch.bfloat16),
            "n": torch.arange(6)}


def test_identical_across_formats(tmp_path, cli):
    sd = _sd()
    save_file(sd, tmp_path / "x.safetensors")
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / "y.pth")
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.pth")
    assert res.code == 0, res.stderr
    assert "identical: 3 tensors bit-equal" in res.stdout


def test_different_values(tmp_path, cli):
    sd = _sd()
    save_file(sd, tmp_path / "x.safetensors")
    sd["a"] = sd["a"].clone()
    sd["a"][1, 2] += 0.25
    save_file(sd, tmp_path / "y.safetensors")
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors", "--json")
    assert res.code == EXIT_DIFFER == 8
    data = json.loads(res.stdout)
    assert data["identical"] is False and data["counts"]["differ"] == 1 and data["counts"]["bit_equal"] == 2
    entry = next(t for t in data["tensors"] if t["name"] == "a")
    assert abs(entry["max_abs_diff"] - 0.25) < 1e-6
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    assert res.code == 8 and "different: 1 differ" in res.stdout and "0.25" in res.stdout
    # within tolerance
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors", "--atol", "0.3")
    assert res.code == 0 and "identical within atol" in res.stdout
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors", "--atol", "0.1")
    assert res.code == 8


def test_negative_zero_is_not_bit_equal(tmp_path, cli):
    save_file({"z": torch.zeros(3)}, tmp_path / "x.safetensors")
    save_file({"z": -torch.zeros(3)}, tmp_path / "y.safetensors")
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors", "--json")
    assert res.code == 8
    entry = json.loads(res.stdout)["tensors"][0]
    assert entry["status"] == "differ" and entry["max_abs_diff"] == 0.0


def test_missing_keys_and_shape_and_dtype_mismatch(tmp_path, cli):
    sd = _sd()
    save_file(sd, tmp_path / "x.safetensors")
    other = {"a": torch.randn(3, 4), "b": sd["b"].float(), "extra": torch.ones(1)}
    save_file(other, tmp_path / "y.safetensors")
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors", "--json")
    assert res.code == 8
    data = json.loads(res.stdout)
    status = {t["name"]: t["status"] for t in data["tensors"]}
    assert status == {"a": "shape", "b": "differ", "n": "only_a", "extra": "only_b"}
    b = next(t for t in data["tensors"] if t["name"] == "b")
    assert (b["dtype_a"], b["dtype_b"]) == ("bfloat16", "float32") and b["max_abs_diff"] == 0.0
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    assert "1 shape mismatch" in res.stdout and "1 only in A" in res.stdout and "1 only in B" in res.stdout
    assert "bfloat16 / float32" in res.stdout and "4×3 / 3×4" in res.stdout


def test_missing_path(tmp_path, cli):
    save_file({"a": torch.ones(1)}, tmp_path / "x.safetensors")
    res = cli("diff", tmp_path / "x.safetensors", tmp_path / "nope.safetensors")
    assert res.code == 3 and res.stderr.startswith("error:")


def test_strided_torch_tensor_against_contiguous_copy(tmp_path, cli):
    """A view saved by torch.save (non-contiguous on disk) equals its contiguous copy; one flipped sign does not."""
    x = torch.randn(4, 6)
    torch.save({"t": x.t()}, tmp_path / "x.pth")
    save_file({"t": x.t().contiguous()}, tmp_path / "y.safetensors")
    assert cli("diff", tmp_path / "x.pth", tmp_path / "y.safetensors").code == 0
    y = x.t().contiguous()
    y[0, 0] = -y[0, 0]
    save_file({"t": y}, tmp_path / "z.safetensors")
    res = cli("diff", tmp_path / "x.pth", tmp_path / "z.safetensors", "--json")
    assert res.code == 8 and json.loads(res.stdout)["tensors"][0]["status"] == "differ"


def test_progress_bar_on_a_terminal_in_binary_units(tmp_path, cli, monkeypatch):
    """diff drives the engine's one progress bar (stderr, terminals only), in the summaries' units (MiB)."""
    import io

    from rich.console import Console

    from ckpt_tool.ops import engine
    from ckpt_tool.render import human_bytes

    consoles: list[Console] = []

    def terminal() -> Console:
        consoles.append(Console(record=True, force_terminal=True, width=120, file=io.StringIO()))
        return consoles[-1]

    monkeypatch.setattr(engine, "_terminal_console", terminal)
    save_file({"w": torch.zeros(768, 1024)}, tmp_path / "a.safetensors")  # 3 MiB
    save_file({"w": torch.ones(768, 1024)}, tmp_path / "b.safetensors")
    res = cli("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert res.code == 8 and len(consoles) == 1
    text = consoles[0].export_text()
    assert "comparing" in text and f"{human_bytes(6 * 2**20)} / {human_bytes(6 * 2**20)}" in text, text
    assert human_bytes(6 * 2**20) == "6.00 MiB" and " MB" not in text
    for quiet in (("--json",), ("-q",)):  # no bar with --json or --quiet, even on a terminal
        assert cli("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors", *quiet).code == 8
    assert len(consoles) == 1


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from ckpt_tool.ops import engine

    assert engine._terminal_console() is None  # pytest captures stderr: not a terminal
    bar = engine.Progress(10, "comparing", True)
    bar.advance(10)
    bar.close()
    assert bar.bar is None and capsys.readouterr().err == ""
