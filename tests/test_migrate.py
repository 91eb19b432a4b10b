"""``ckpt-tool migrate`` on realistic legacy LitGPT trees (formats.md §2.2)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import migrate_helpers as h
import pytest
import yaml

from ckpt_tool.errors import EXIT_CONFLICT
from ckpt_tool.ops import migrate as ops
from ckpt_tool.ops.journal import JOURNAL_NAME, Journal, migrate_lock


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return h.build_tree(tmp_path / "runs", tmp_path / "outside")


# where each legacy file must end up (relative to ROOT)
EXPECTED_MOVES = {
    "2023-05-alpaca-lora/lit_model_lora_finetuned.pth": "2023-05-alpaca-lora/final/lit_model.pth.lora",
    "2023-05-alpaca-lora/iter-000100.pth": "2023-05-alpaca-lora/step-000100/lit_model.pth.lora",
    "2023-05-alpaca-lora/iter-000200.pth": "2023-05-alpaca-lora/step-000200/lit_model.pth.lora",
    "2023-06-dolly-lora/lit_model_lora_finetuned.pth": "2023-06-dolly-lora/final/lit_model.pth.lora",
    "2023-06-dolly-lora/iter-000100-ckpt.pth": "2023-06-dolly-lora/step-000100/lit_model.pth.lora",
    "2023-07-adapter/lit_model_adapter_finetuned.pth": "2023-07-adapter/final/lit_model.pth.adapter",
    "2023-07-adapter/iter-000050-ckpt.pth": "2023-07-adapter/step-000050/lit_model.pth.adapter",
    "2023-08-adapter-v2/lit_model_adapter_finetuned.pth": "2023-08-adapter-v2/final/lit_model.pth.adapter_v2",
    "2023-09-full/lit_model_finetuned.pth": "2023-09-full/final/lit_model.pth",
    "2023-09-full/iter-000100-ckpt.pth": "2023-09-full/step-000100/lit_model.pth",
    "2023-09-full/iter-000300-ckpt.pth": "2023-09-full/step-000300/lit_model.pth",
    "2024-01-full/step-000100.pth": "2024-01-full/step-000100/lit_model.pth",
    "2024-01-full/lit_model_finetuned.pth": "2024-01-full/final/lit_model.pth",
    "2024-03-04-lora/final/lit_model.pth": "2024-03-04-lora/final/lit_model.pth.lora",
    "2024-03-04-lora/iter-000100/lit_model.pth": "2024-03-04-lora/step-000100/lit_model.pth.lora",
    "2024-03-06-lora/final/lit_model.pth": "2024-03-06-lora/final/lit_model.pth.lora",
    "2024-03-06-lora/step-000050/lit_model.pth": "2024-03-06-lora/step-000050/lit_model.pth.lora",
}
UNTOUCHED_PREFIXES = ("2024-11-current/", "checkpoints/", "lit-llama-2023/", "misc/")


def test_plan_changes_nothing_and_explains(tree: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # a wide terminal: nothing folded or shortened
    before = h.snapshot(tree)
    res = cli("migrate", tree)
    assert res.code == 0, res.stderr
    assert h.snapshot(tree) == before
    assert not (tree / JOURNAL_NAME).exists()
    out = res.stdout
    for src, dst in EXPECTED_MOVES.items():
        run = src.split("/")[0]
        assert f"{src[len(run) + 1 :]} \u2192 {dst[len(run) + 1 :]}" in out, src
    # assumed LoRA alpha is said out loud, unrecognised and foreign files are listed
    assert "ASSUMED lora_alpha=16" in out
    assert "lit-llama" in out and "not moved" in out
    assert "notes.txt" in out and "not recognised" in out
    assert "base_model" in out and "outside ROOT" in out
    assert "misc/" in out
    assert "--apply" in res.stderr


def test_plan_json(tree: Path, cli) -> None:
    res = cli("migrate", tree, "--json")
    assert res.code == 0
    data = json.loads(res.stdout)
    assert data["applied"] is False and data["conflicts"] == []
    moves = {a["from"]: a["to"] for a in data["actions"] if a["action"] == "move"}
    for src, dst in EXPECTED_MOVES.items():
        assert moves[src] == dst
    left = {item["path"] for item in data["left"]}
    assert {
        "lit-llama-2023/lit-llama.pth",
        "lit-llama-2023/iter-000050-ckpt.pth",
        "2023-06-dolly-lora/notes.txt",
    } <= left


def test_apply_moves_weights_byte_for_byte(tree: Path, cli) -> None:
    before = h.snapshot(tree)
    inode = {src: os.stat(tree / src).st_ino for src in EXPECTED_MOVES}
    res = cli("migrate", tree, "--apply")
    assert res.code == 0, res.stderr
    after = h.snapshot(tree)
    for src, dst in EXPECTED_MOVES.items():
        assert src not in after or src.endswith("/lit_model.pth") and "final/" not in src, src
        assert after[dst] == before[src], dst
        assert os.stat(tree / dst).st_ino == inode[src]  # a rename, not a copy
    assert not (tree / "2024-03-04-lora" / "iter-000100").exists()
    # the hard-linked pair is still one file under its two new names
    a, b = tree / "2023-09-full/final/lit_model.pth", tree / "2023-09-full/step-000300/lit_model.pth"
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 2
    # untouched: today's layout, the base, lit-llama, unrelated files, the symlink
    for rel, digest in before.items():
        if rel.startswith(UNTOUCHED_PREFIXES) or rel in (
            "2023-06-dolly-lora/base_model",
            "2023-06-dolly-lora/notes.txt",
        ):
            assert after.get(rel) == digest, rel
    assert os.readlink(tree / "2023-06-dolly-lora/base_model") == str(tree.parent / "outside")
    assert (tree.parent / "outside" / "weights.pth").read_bytes() == b"not part of the tree"
    # every new checkpoint folder holds its companions and a record of the original name
    for dst in EXPECTED_MOVES.values():
        folder = tree / Path(dst).parent
        record = json.loads((folder / "migration.json").read_text())
        assert record["files"][Path(dst).name]["from"]
    rec = json.loads((tree / "2023-06-dolly-lora/step-000100/migration.json").read_text())
    assert rec["files"] == {"lit_model.pth.lora": {"from": "iter-000100-ckpt.pth", "kind": "lora"}}
    assert "micro-batch" in rec["note"]
    for folder in ("2023-06-dolly-lora/final", "2023-06-dolly-lora/step-000100", "2023-09-full/step-000300"):
        for name in ("model_config.yaml", "tokenizer.json", "tokenizer_config.json"):
            assert (tree / folder / name).is_file(), (folder, name)
        assert sha(tree / folder / "tokenizer.json") == sha(tree / Path(folder).parent / "tokenizer.json")
    # the March 2024 folder form keeps its own companions (moved, not copied)
    step = tree / "2024-03-04-lora/step-000100"
    assert {p.name for p in step.iterdir()} >= {
        "lit_model.pth.lora",
        "lit_config.json",
        "tokenizer.json",
        "model_config.yaml",
    }
    # a run that had hyperparameters.yaml keeps it verbatim
    assert (
        after["2024-03-06-lora/final/hyperparameters.yaml"]
        == before["2024-03-06-lora/final/hyperparameters.yaml"]
    )


@pytest.mark.interop  # imports litgpt
def test_converted_configs_load_in_litgpt(tree: Path, cli) -> None:
    from litgpt.config import Config

    assert cli("migrate", tree, "--apply").code == 0
    cfg = Config.from_file(tree / "2023-06-dolly-lora/final/model_config.yaml")
    assert cfg.norm_class_name == "LayerNorm" and cfg.mlp_class_name == "GptNeoxMLP"
    assert cfg.rope_condense_ratio == 1 and cfg.hf_config == {"org": "EleutherAI", "name": "pythia-tiny"}
    assert cfg.name == "pythia-tiny"
    sw = Config.from_file(tree / "2023-09-full/final/model_config.yaml")
    assert sw.sliding_window_indices == [1] and sw.sliding_window_size == 16
    raw = yaml.safe_load((tree / "2023-09-full/final/model_config.yaml").read_text())
    assert (
        not {"_norm_class", "_mlp_class", "condense_ratio", "org", "sliding_window_layer_placing"}
        & raw.keys()
    )
    # the config-only fix-up of a March 10 2024 run (today's weights name, lit_config.json)
    Config.from_file(tree / "2024-03-10-lora/final/model_config.yaml")


def test_interleaved_sliding_window_mapping() -> None:
    from ckpt_tool_lit.migrate import convert_config

    new, _changes = convert_config(
        {**h.OLD_CONFIG, "n_layer": 5, "sliding_window_layer_placing": "interleaved"}
    )
    assert new["sliding_window_indices"] == [1, 0, 1, 0, 1]
    new, _ = convert_config({**h.OLD_CONFIG, "n_layer": 3, "sliding_window_layer_placing": "all"})
    assert new["sliding_window_indices"] == [1, 1, 1]
    with pytest.raises(ValueError):
        convert_config({**h.OLD_CONFIG, "sliding_window_layer_placing": "sometimes"})


def test_hyperparameters_written_for_lora_runs_without_one(tree: Path, cli) -> None:
    assert cli("migrate", tree, "--apply").code == 0
    text = (tree / "2023-06-dolly-lora/final/hyperparameters.yaml").read_text()
    hp = yaml.safe_load(text)
    assert hp["lora_r"] == h.R and hp["lora_alpha"] == 16
    assert hp["lora_query"] and hp["lora_value"] and not hp["lora_key"]
    assert "ASSUMED" in text and "lora_alpha" in text
    # adapters and full fine-tunes get none; runs that had one keep theirs
    assert not (tree / "2023-07-adapter/final/hyperparameters.yaml").exists()
    assert not (tree / "2023-09-full/final/hyperparameters.yaml").exists()
    assert (
        yaml.safe_load((tree / "2024-03-06-lora/final/hyperparameters.yaml").read_text())["lora_alpha"] == 32
    )


def test_lora_rank_comes_from_shapes(tmp_path: Path, cli) -> None:
    run = tmp_path / "root" / "run"
    h.save(run / "lit_model_lora_finetuned.pth", {"model": h.lora_sd(r=2)})
    h.lit_config(run)
    res = cli("migrate", tmp_path / "root", "--json")
    assert res.code == 0
    reasons = [
        a["reason"]
        for a in json.loads(res.stdout)["actions"]
        if (a["to"] or "").endswith("hyperparameters.yaml")
    ]
    assert reasons and "lora_r=2 from the shapes" in reasons[0] and "ASSUMED lora_alpha=16" in reasons[0]


def test_second_apply_is_a_noop(tree: Path, cli) -> None:
    assert cli("migrate", tree, "--apply").code == 0
    once = h.snapshot(tree)
    journal = (tree / JOURNAL_NAME).read_bytes()
    res = cli("migrate", tree, "--apply")
    assert res.code == 0
    assert "nothing to do" in res.stderr
    assert h.snapshot(tree) == once
    assert (tree / JOURNAL_NAME).read_bytes() == journal
    plan = cli("migrate", tree, "--json")
    assert [a for a in json.loads(plan.stdout)["actions"]] == []


def test_undo_restores_the_tree(tree: Path, cli) -> None:
    before = h.snapshot(tree)
    assert cli("migrate", tree, "--apply").code == 0
    assert h.snapshot(tree) != before
    res = cli("migrate", tree, "--undo")
    assert res.code == 0, res.stderr
    assert h.snapshot(tree) == before
    assert not (tree / JOURNAL_NAME).exists()
    # and the tree can be migrated again from scratch
    assert cli("migrate", tree, "--apply").code == 0
    assert (tree / "2023-06-dolly-lora/final/lit_model.pth.lora").is_file()


def test_undo_keeps_files_edited_after_the_migration(tree: Path, cli) -> None:
    assert cli("migrate", tree, "--apply").code == 0
    edited = tree / "2023-06-dolly-lora/final/hyperparameters.yaml"
    edited.write_text("lora_r: 4\nlora_alpha: 8\n")
    res = cli("migrate", tree, "--undo")
    assert res.code == EXIT_CONFLICT  # something was left: not a success
    assert edited.read_text() == "lora_r: 4\nlora_alpha: 8\n"
    assert "edited since the migration" in res.stderr
    # the folder is undone whole or not at all: its weights stay beside the kept file
    assert (tree / "2023-06-dolly-lora/final/lit_model.pth.lora").is_file()
    assert not (tree / "2023-06-dolly-lora/lit_model_lora_finetuned.pth").exists()
    assert (tree / "2023-06-dolly-lora/iter-000100-ckpt.pth").is_file()  # other folders were restored
    assert (tree / JOURNAL_NAME).exists()  # kept: the undo is not complete


def test_undo_without_journal(tmp_path: Path, cli) -> None:
    res = cli("migrate", tmp_path, "--undo")
    assert res.code == 3 and "nothing to undo" in res.stderr


def test_current_tree_is_untouched(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    h.run_current(root / "run-a")
    h.base_checkpoint(root / "checkpoints" / "org" / "base")
    before = h.snapshot(root)
    res = cli("migrate", root)
    assert res.code == 0 and "nothing to do" in res.stderr and res.stdout == ""
    res = cli("migrate", root, "--apply")
    assert res.code == 0 and "nothing to do" in res.stderr
    assert h.snapshot(root) == before
    assert sorted(os.listdir(root)) == ["checkpoints", "run-a"]


def test_symlinked_directories_are_not_followed(tmp_path: Path, cli) -> None:
    outside = tmp_path / "elsewhere"
    h.run_2023_06_lora(outside / "run")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "linked")
    os.symlink(outside / "run" / "lit_model_lora_finetuned.pth", root / "lit_model_lora_finetuned.pth")
    before = h.snapshot(outside)
    res = cli("migrate", root, "--apply", "--json")
    assert res.code == 0, res.stderr
    assert h.snapshot(outside) == before
    assert os.path.islink(root / "lit_model_lora_finetuned.pth")


def test_conflict_destination_exists(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    h.run_2023_06_lora(root / "run")
    h.save(root / "run" / "final" / "lit_model.pth.lora", {"model": h.lora_sd(seed=99)})
    h.run_2023_07_adapter(root / "other")
    before = h.snapshot(root)
    res = cli("migrate", root, "--apply")
    assert res.code == EXIT_CONFLICT
    assert "run/final/lit_model.pth.lora: destination already exists" in res.stderr
    assert h.snapshot(root) == before  # nothing at all happened, not even in the other run
    assert not (root / JOURNAL_NAME).exists()
    plan = cli("migrate", root)
    assert plan.code == EXIT_CONFLICT and "would refuse" in plan.stderr


def test_conflict_two_sources_one_destination(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    run = root / "run"
    h.save(run / "iter-000100.pth", h.lora_sd(seed=1))
    h.save(run / "iter-000100-ckpt.pth", {"model": h.lora_sd(seed=2)})
    before = h.snapshot(root)
    res = cli("migrate", root, "--apply", "--json")
    assert res.code == EXIT_CONFLICT
    conflicts = json.loads(res.stdout)["conflicts"]
    assert any(
        "2 sources for one destination" in c and "run/step-000100/lit_model.pth.lora" in c for c in conflicts
    )
    assert h.snapshot(root) == before


def test_conflict_case_only(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    run = root / "run"
    h.save(run / "lit_model_lora_finetuned.pth", {"model": h.lora_sd()})
    h.write_text(run / "Final" / "notes.txt", "x")
    before = h.snapshot(root)
    res = cli("migrate", root, "--apply")
    assert res.code == EXIT_CONFLICT
    assert "differs only in case" in res.stderr
    assert h.snapshot(root) == before


def test_source_changed_between_plan_and_apply(tree: Path, cli, monkeypatch) -> None:
    changed = tree / "2023-06-dolly-lora" / "lit_model_lora_finetuned.pth"
    real_plan = ops._fresh_plan

    def plan_then_touch(root: Path, jobs: int, options: ops.MigrateOptions) -> ops.Plan:
        result = real_plan(root, jobs, options)
        st = os.stat(changed)  # e.g. a training job still writing its final save
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return result

    monkeypatch.setattr(ops, "_fresh_plan", plan_then_touch)
    res = cli("migrate", tree, "--apply", "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    skipped = {s["src"] for s in data["skipped"]}
    assert "2023-06-dolly-lora/lit_model_lora_finetuned.pth" in skipped
    assert changed.is_file() and not (tree / "2023-06-dolly-lora/final").exists()
    # everything else went ahead
    assert (tree / "2023-06-dolly-lora/step-000100/lit_model.pth.lora").is_file()
    assert (tree / "2023-07-adapter/final/lit_model.pth.adapter").is_file()


def test_lock_prevents_concurrent_runs(tree: Path, cli) -> None:
    before = h.snapshot(tree)
    with migrate_lock(tree):
        res = cli("migrate", tree, "--apply")
        assert res.code == EXIT_CONFLICT and "another ckpt-tool migrate is running" in res.stderr
        res = cli("migrate", tree, "--undo")
        assert res.code == EXIT_CONFLICT
    assert h.snapshot(tree) == before
    assert cli("migrate", tree, "--apply").code == 0
    assert not (tree / ".ckpt-tool-migrate.lock").exists()


def test_unreadable_and_foreign_weights_are_reported(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    run = root / "run"
    h.write_text(run / "iter-000100-ckpt.pth", "truncated")
    h.save(run / "lit_model_lora_finetuned.pth", {"model": {"encoder.weight": h._t(2, 2, seed=1)}})
    res = cli("migrate", root, "--json")
    assert res.code == 0
    left = {i["path"]: i["reason"] for i in json.loads(res.stdout)["left"]}
    assert "cannot read" in left["run/iter-000100-ckpt.pth"]
    assert "not a LitGPT state dict" in left["run/lit_model_lora_finetuned.pth"]
    assert json.loads(res.stdout)["actions"] == []


def test_parallel_plan_matches_serial(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(ops.PARALLEL_MIN_DIRS + 6):
        h.save(root / f"run-{i:03d}" / "lit_model_lora_finetuned.pth", {"model": h.lora_sd(seed=i)})
        if i % 2:
            h.save(root / f"run-{i:03d}" / "iter-000010-ckpt.pth", {"model": h.lora_sd(seed=i + 100)})
        h.lit_config(root / f"run-{i:03d}")
    serial = ops.plan(root, jobs=1)
    parallel = ops.plan(root, jobs=2)
    assert len(ops.walk_dirs(root)) >= ops.PARALLEL_MIN_DIRS
    assert serial.steps == parallel.steps and serial.left == parallel.left and serial.steps


def test_plan_path_does_not_import_torch(tree: Path) -> None:
    code = (
        "import sys\n"
        "from ckpt_tool.cli import main\n"
        "try:\n    main(['migrate', sys.argv[1], '--jobs', '1'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tree)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- --upgrade-attn (opt-in)


@pytest.mark.interop  # imports litgpt
def test_upgrade_attn_matches_litgpt_and_keeps_originals(tree: Path, cli) -> None:
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT

    before = h.snapshot(tree)
    res = cli("migrate", tree, "--apply", "--upgrade-attn", "--json")
    assert res.code == 0, res.stderr
    after = h.snapshot(tree)
    # originals are untouched, under their old names
    for rel in (
        "2023-09-full/lit_model_finetuned.pth",
        "2023-09-full/iter-000100-ckpt.pth",
        "2023-08-adapter-v2/lit_model_adapter_finetuned.pth",
    ):
        assert after[rel] == before[rel]
    # LoRA (era-dependent, §2.4) and optimizer states are moved as they are, not converted
    assert (
        after["2023-06-dolly-lora/final/lit_model.pth.lora"]
        == before["2023-06-dolly-lora/lit_model_lora_finetuned.pth"]
    )
    assert after["2024-01-full/step-000100/lit_model.pth"] == before["2024-01-full/step-000100.pth"]

    legacy = torch.load(tree / "2023-09-full/lit_model_finetuned.pth", weights_only=True)["model"]
    converted = torch.load(tree / "2023-09-full/final/lit_model.pth", weights_only=True)
    assert set(converted) == {"model"}
    config = Config.from_file(tree / "2023-09-full/final/model_config.yaml")
    model = GPT(config)
    model.load_state_dict(legacy)  # LitGPT's own legacy loader regroups attn.attn
    reference = model.state_dict()
    assert list(converted["model"]) == [k.replace(".attn.attn.", ".attn.qkv.") for k in legacy]
    assert set(converted["model"]) == set(reference)
    for key, value in reference.items():
        assert torch.equal(converted["model"][key], value), key
    assert not torch.equal(
        converted["model"]["transformer.h.0.attn.qkv.weight"], legacy["transformer.h.0.attn.attn.weight"]
    )

    v2 = torch.load(tree / "2023-08-adapter-v2/final/lit_model.pth.adapter_v2", weights_only=True)["model"]
    v2_legacy = torch.load(tree / "2023-08-adapter-v2/lit_model_adapter_finetuned.pth", weights_only=True)[
        "model"
    ]
    assert "transformer.h.0.attn.qkv.adapter_bias" in v2 and not any(".attn.attn." in k for k in v2)
    bias = v2_legacy["transformer.h.0.attn.attn.adapter_bias"]
    assert torch.equal(
        v2["transformer.h.0.attn.qkv.adapter_bias"],
        torch.cat([bias[0:4], bias[12:16], bias[4:8], bias[16:20], bias[8:12], bias[20:24]]),
    )
    record = json.loads((tree / "2023-09-full/final/migration.json").read_text())
    assert record["files"]["lit_model.pth"]["converted_from"] == "lit_model_finetuned.pth"

    # rerunning (with or without the flag) is a no-op that names the kept originals; undo restores everything
    for extra in (["--upgrade-attn"], []):
        again = cli("migrate", tree, "--apply", "--json", *extra)
        assert again.code == 0 and json.loads(again.stdout)["actions"] == []
        assert any("original kept" in i["reason"] for i in json.loads(again.stdout)["left"])
        assert h.snapshot(tree) == after
    assert cli("migrate", tree, "--undo").code == 0
    assert h.snapshot(tree) == before


def test_upgrade_attn_plan_does_not_import_torch(tree: Path) -> None:
    code = (
        "import sys\n"
        "from ckpt_tool.cli import main\n"
        "try:\n    main(['migrate', sys.argv[1], '--jobs', '1', '--upgrade-attn'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tree)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "derive" in proc.stdout


def test_plan_after_an_interrupted_apply_shows_what_is_left(tree: Path, cli) -> None:
    plan = ops.plan(tree)
    journal = Journal(tree)
    session = journal.start(plan.steps)
    first = next(s for s in session.steps if s.op == ops.MKDIR)
    os.mkdir(tree / first.dst)  # the interrupted run got this far
    res = cli("migrate", tree, "--json")
    assert res.code == 0
    data = json.loads(res.stdout)
    assert data["resuming"] is True
    states = [a["status"] for a in data["actions"]]
    assert states.count("done") == 1 and states.count("pending") == len(states) - 1
    assert "interrupted" in res.stderr
    res = cli("migrate", tree, "--apply")
    assert res.code == 0 and "resumed an interrupted migration" in res.stderr
    assert (tree / "2023-06-dolly-lora/final/lit_model.pth.lora").is_file()
    assert cli("migrate", tree, "--undo").code == 0
