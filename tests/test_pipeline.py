from pathlib import Path

import pytest
import yaml

from verticalft.launch import launch_command
from verticalft.pipeline import StageFailed, enabled_stages, preflight, run_recipe
from verticalft.recipe import load_recipe
from verticalft.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_profile_adds_the_tiny_models_stage():
    full = ["curate", "cpt", "sft", "dpo", "distill", "quantize", "eval", "bench", "cost", "route", "export"]
    assert enabled_stages(load_recipe(ROOT / "recipes/finance.yaml", "tiny")) == ["tiny_models", *full]
    assert enabled_stages(load_recipe(ROOT / "recipes/finance.yaml")) == full
    # cost prices what eval/bench measured: without them there is nothing to price
    r = load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.eval=null", "stages.bench=null"])
    assert enabled_stages(r)[-2:] == ["quantize", "export"]
    # route needs answers (eval) and prices (bench): without bench, cost prices the spend alone
    r = load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.bench=null"])
    assert enabled_stages(r)[-3:] == ["eval", "cost", "export"]
    # no scheme: nothing to quantize, the export of the bf16 folders still runs
    r = load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.export.schemes=[]"])
    assert "quantize" not in enabled_stages(r) and enabled_stages(r)[-1] == "export"


def test_preflight_lists_every_missing_file_before_any_work(tmp_path):
    r = load_recipe(
        ROOT / "recipes/finance.yaml"
    )  # full profile: data_pipelines/finance/data/ is not shipped
    problems = preflight(r, ["cpt", "sft", "dpo"])
    assert any("finance/data/corpus.jsonl" in p for p in problems)
    assert any("finance/data/preferences.jsonl" in p for p in problems)
    with pytest.raises(StageFailed, match="cannot start"):
        run_recipe(r, RunDir(tmp_path), until="dpo", echo=lambda s: None)
    assert not (tmp_path / "cpt").exists()


def test_unknown_until_stage_is_a_clear_error(tmp_path):
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny")
    with pytest.raises(StageFailed, match="unknown stage 'sfft'"):
        run_recipe(r, RunDir(tmp_path), until="sfft", echo=lambda s: None)


def test_launch_commands(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    for key, value in {"NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    r = load_recipe(
        ROOT / "recipes/finance.yaml", "tiny", ["compute.launcher=torchrun", "compute.gpus_per_node=2"]
    )
    cmd = launch_command(r, run, "sft", resume=True)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cmd[-7:] == ["-m", "verticalft.worker", "--run-dir", str(tmp_path), "--stage", "sft", "--resume"]
    r = load_recipe(ROOT / "recipes/finance.yaml")  # accelerate + fsdp2 over 8 nodes × 8 GPUs
    cmd = launch_command(r, run, "cpt", resume=False)
    assert "accelerate.commands.launch" in cmd
    config = Path(cmd[cmd.index("--config_file") + 1])
    assert config == tmp_path / "cpt" / "accelerate_config.yaml"  # fsdp2.yaml, resolved for the stage
    assert yaml.safe_load(config.read_text())["fsdp_config"]["fsdp_version"] == 2
    assert cmd[cmd.index("--num_processes") + 1] == "64"


def test_serving_stages_without_vllm_say_how_to_install_it(monkeypatch):
    import importlib.util

    from verticalft.pipeline import serving_problems

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    r = load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.eval.backend=vllm"])
    problems = serving_problems(r, enabled_stages(r))
    assert len(problems) == 2 and all("make setup-serve" in p for p in problems)
    assert problems[0].startswith("stages.bench:") and problems[1].startswith("stages.eval.backend=vllm:")
    assert serving_problems(r, ["curate", "cpt"]) == []


def _fake_stages(monkeypatch):
    """Stages that only record that they ran (what they compute does not matter here)."""
    import verticalft.pipeline as pipeline
    from verticalft.stages.base import StageResult

    ran: list[str] = []

    def fake(ctx):
        ran.append(ctx.stage)
        return StageResult(outputs={"n": str(len(ran))})

    monkeypatch.setattr(pipeline, "run_stage_in_process", fake)
    return ran


def test_a_stage_that_reran_makes_every_later_stage_rerun(tmp_path, monkeypatch):
    # Measured before: bench resumed after a kill (new figures), and cost was skipped as
    # "inputs unchanged", so the report priced the old throughput.
    ran = _fake_stages(monkeypatch)
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny")
    run = RunDir(tmp_path)
    run_recipe(r, run, until="dpo", echo=lambda s: None)
    assert ran == ["tiny_models", "curate", "cpt", "sft", "dpo"]
    ran.clear()
    run_recipe(r, run, until="dpo", echo=lambda s: None)
    assert ran == []  # nothing changed: everything skipped
    run_recipe(r, run, until="dpo", force=["sft"], echo=lambda s: None)
    assert ran == ["sft", "dpo"]  # same fingerprints, but dpo read the old sft outputs


def test_status_shows_a_killed_stage_as_interrupted_and_later_ones_stale(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    from verticalft.pipeline import stage_fingerprints, stage_state

    ran = _fake_stages(monkeypatch)
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny")
    run = RunDir(tmp_path)
    run_recipe(r, run, until="dpo", echo=lambda s: None)
    stages = ["tiny_models", "curate", "cpt", "sft", "dpo"]
    fps = stage_fingerprints(r, stages)
    # A `kill -9` while sft reruns: marked running by a process that no longer exists.
    run.begin("sft", fps["sft"], {})
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    marker = tmp_path / "sft" / "RUNNING.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "pid": int(dead.stdout)}))
    states = {s: stage_state(run, stages, s, fps[s]) for s in stages}
    assert states["cpt"] == "done"
    assert states["sft"].startswith("interrupted")
    assert states["dpo"].startswith("stale")
    ran.clear()
    out: list[str] = []
    run_recipe(r, run, until="dpo", echo=out.append)
    assert ran == ["sft", "dpo"] and any("resuming a killed attempt" in line for line in out)
    assert {stage_state(run, stages, s, fps[s]) for s in stages} == {"done"}


def test_only_checks_what_it_will_run(tmp_path, monkeypatch):
    # Measured before: `--only curate` refused to start because bench needed vLLM.
    ran = _fake_stages(monkeypatch)
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["data.heldout.path=nowhere.jsonl"])
    with pytest.raises(StageFailed, match="nowhere.jsonl"):
        run_recipe(r, RunDir(tmp_path / "all"), echo=lambda s: None)
    assert ran == []
    run_recipe(r, RunDir(tmp_path / "one"), only=["curate"], echo=lambda s: None)
    assert ran == ["curate"]


def test_only_with_an_unknown_stage_is_exit_2_with_the_stage_names(tmp_path):
    # Regression: `--only sfft` matched no stage, ran nothing and exited 0.
    from typer.testing import CliRunner

    from verticalft.cli import app

    result = CliRunner().invoke(
        app,
        [
            "run",
            str(ROOT / "recipes/finance.yaml"),
            "-p",
            "tiny",
            "--only",
            "sfft",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "--only: unknown stage 'sfft' (did you mean 'sft'?)" in result.output
    assert (
        "stages: tiny_models, curate, cpt, sft, dpo, distill, quantize, eval, bench, cost, route, export"
        in result.output
    )
    assert not (tmp_path / "finance" / "tiny" / "recipe.resolved.yaml").exists()  # nothing ran


def test_a_model_folder_without_tokenizer_files_is_a_validate_problem(tmp_path):
    # Regression: `validate` crashed in transformers with a traceback (ValueError about slow
    # tokenizers) on a teacher folder holding weights/config but no tokenizer.
    from typer.testing import CliRunner

    from verticalft.cli import app

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text('{"model_type": "llama"}')
    args = ["validate", str(ROOT / "recipes/finance.yaml"), "-s", f"models.teacher={teacher}"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 2
    assert (
        f"models.teacher: {teacher} has no tokenizer files (tokenizer.json / tokenizer_config.json)"
        in result.output
    )
    # `run` refuses it the same way before any work (preflight)
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [f"models.teacher={teacher}"])
    assert f"models.teacher: {teacher} has no tokenizer files" in " ".join(preflight(r, ["sft"]))


def _renamed_into_place(monkeypatch) -> list[Path]:
    """The files written by temp file + rename (rundir.atomic_write_text) from here on."""
    import os

    import verticalft.rundir as rundir

    done: list[Path] = []
    real = os.replace

    def spy(src, dst):
        real(src, dst)
        done.append(Path(dst))

    monkeypatch.setattr(rundir.os, "replace", spy)
    return done


def test_files_other_processes_read_are_written_whole(tmp_path, monkeypatch):
    # Launched ranks read recipe.resolved.yaml and `accelerate launch` the stage's config: a
    # reader must never find either half written, so both go through a temp file and a rename.
    from verticalft.launch import stage_accelerate_config

    _fake_stages(monkeypatch)
    renamed = _renamed_into_place(monkeypatch)
    run = RunDir(tmp_path)
    run_recipe(load_recipe(ROOT / "recipes/finance.yaml", "tiny"), run, only=["curate"], echo=lambda s: None)
    assert tmp_path / "recipe.resolved.yaml" in renamed
    config = stage_accelerate_config(load_recipe(ROOT / "recipes/finance.yaml"), run, "cpt")
    assert config == tmp_path / "cpt" / "accelerate_config.yaml" and config in renamed
    assert yaml.safe_load(config.read_text())["fsdp_config"]["fsdp_version"] == 2
