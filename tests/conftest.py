"""Test-wide setup: offline hubs, a fresh plugin manager per test, and a CLI runner."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_plugin_manager(monkeypatch):
    """Each test sees plugins as configured by its own environment."""
    from ckpt_tool.plugins import reset_plugin_manager

    monkeypatch.delenv("CKPT_TOOL_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``cli("inspect", path, "--json")`` -> Result."""
    from cli_helpers import Result

    from ckpt_tool.cli import main

    def run(*args: object) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture(scope="module")
def quick_torch():
    """For modules of tiny models: one torch thread (two on a busy 2-core box cost 30 ms per tiny matmul),
    and LitGPT's converters' ``gc.collect()`` (0.6 s each with torch and transformers loaded) a no-op.
    Use with ``pytest.mark.usefixtures("quick_torch")``; both are restored after the module."""
    import gc

    import torch

    threads, collect = torch.get_num_threads(), gc.collect
    torch.set_num_threads(1)
    gc.collect = lambda *a: 0
    yield
    gc.collect = collect
    torch.set_num_threads(threads)
