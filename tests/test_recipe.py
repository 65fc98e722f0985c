import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from verticalft.recipe import Recipe, RecipeError, load_recipe, parse_override, recipe_to_yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", ["full", "tiny"])
def test_shipped_recipes_validate(recipe, profile):
    r = load_recipe(recipe, profile)
    assert r.stages.sft is not None and r.stages.dpo is not None


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", ["full", "tiny"])
def test_resolved_recipe_round_trips(recipe, profile):
    # Launched workers (torchrun) read recipe.resolved.yaml back: it must validate to the same recipe.
    loaded = load_recipe(recipe, profile)
    again = Recipe.model_validate(yaml.safe_load(recipe_to_yaml(loaded)))
    assert again.model_dump(exclude={"profiles"}) == loaded.model_dump(exclude={"profiles"})
    assert again.stages.curate.filters and all(len(f.model_dump()) == 1 for f in again.stages.curate.filters)


def test_full_finance_recipe_is_a_32b_teacher_with_8b_14b_students_and_qlora():
    r = load_recipe(ROOT / "recipes/finance.yaml")
    assert r.models.teacher == "Qwen/Qwen3-32B"
    assert any("8B" in s for s in r.models.students) and any("14B" in s for s in r.models.students)
    assert r.stages.sft.quantization == "nf4"


def test_tiny_profile_points_each_recipe_at_its_own_sample():
    r = load_recipe(ROOT / "recipes/real_estate.yaml", "tiny")
    assert r.models.teacher == "tiny://teacher"
    assert r.data.corpus[0].path == "data_pipelines/real_estate/sample/corpus.jsonl"
    assert r.data.sft[0].tokens is None  # the full recipe's planned size does not leak into tiny


def _bad_recipe(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "recipes/finance.yaml").read_text())
    raw["stages"]["sft"]["lora"]["rank"] = 8  # typo for r
    raw["stages"]["sft"]["trainer"]["learning_rat"] = 1e-4  # typo for learning_rate
    raw["stages"]["dpo"]["trainer"]["output_dir"] = "/tmp/x"  # managed by the toolkit
    raw["compute"]["mfu"] = 1.5
    raw["modles"] = {}
    path = tmp_path / "recipes" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bad_recipe_lists_every_problem_with_paths_and_hints(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_bad_recipe(tmp_path))
    problems = {p.path: p.message for p in exc.value.problems}
    assert "did you mean 'r'" in problems["stages.sft.lora.rank"]
    assert "did you mean 'learning_rate'" in problems["stages.sft.trainer.learning_rat"]
    assert "set by verticalft" in problems["stages.dpo.trainer.output_dir"]
    assert "compute.mfu" in problems
    assert "did you mean 'models'" in problems["modles"]
    assert len(problems) == 5


@pytest.mark.parametrize(
    "stage,key,controller",
    [
        ("sft", "packing", "stages.sft.packing"),
        ("sft", "assistant_only_loss", "models.chat_template"),
        ("cpt", "packing_strategy", "packed plain text"),
        ("cpt", "dataset_text_field", "packed plain text"),
        ("cpt", "completion_only_loss", "loss on every token"),
        ("dpo", "beta", "stages.dpo.beta"),
        ("distill", "remove_unused_columns", "keeps each example's index"),
        ("distill", "temperature", "stages.distill.temperature"),
    ],
)
def test_a_trainer_key_the_stage_manages_names_what_controls_it(stage, key, controller):
    with pytest.raises(RecipeError) as exc:
        load_recipe(ROOT / "recipes/finance.yaml", overrides=[f"stages.{stage}.trainer.{key}=1"])
    problems = {p.path: p.message for p in exc.value.problems}
    assert problems[f"stages.{stage}.trainer.{key}"].startswith("set by verticalft from ")
    assert controller in problems[f"stages.{stage}.trainer.{key}"]


@pytest.mark.slow  # a `verticalft validate` process: 11 CPU-seconds
def test_cli_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", "validate", str(_bad_recipe(tmp_path))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    for key in ("stages.sft.lora.rank", "stages.sft.trainer.learning_rat", "compute.mfu", "modles"):
        assert key in proc.stderr


def test_overrides_apply_and_are_validated():
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.sft.lora.r=4", "compute.seed=7"])
    assert r.stages.sft.lora.r == 4 and r.compute.seed == 7
    with pytest.raises(RecipeError) as exc:
        load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.sft.lora.r=zero"])
    assert exc.value.problems[0].path == "stages.sft.lora.r"


def test_parse_override_rejects_garbage():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ValueError):
        parse_override("no-equals-sign")


def test_unknown_profile_is_a_recipe_error():
    with pytest.raises(RecipeError) as exc:
        load_recipe(ROOT / "recipes/finance.yaml", "tiyn")
    assert "did you mean 'tiny'" in exc.value.problems[0].message


def test_distill_section_is_checked_against_the_kind():
    with pytest.raises(RecipeError) as err:
        load_recipe(
            ROOT / "recipes/finance.yaml",
            "tiny",
            ["stages.distill.kind=on_policy", "stages.distill.loss=tv", "stages.distill.trainer.lmbda=0.5"],
        )
    text = str(err.value)
    assert "stages.distill: Value error, on_policy uses TRL's generalized JSD" in text
    # on_policy passes its trainer block to trl.DistillationConfig, the other kinds to SFTConfig
    assert "stages.distill.trainer.lmbda: not a field of trl.DistillationConfig" in text
    ok = load_recipe(
        ROOT / "recipes/finance.yaml",
        "tiny",
        ["stages.distill.kind=on_policy", "stages.distill.trainer.max_completion_length=8"],
    )
    assert ok.stages.distill.kind == "on_policy"
    with pytest.raises(RecipeError, match="not a field of trl.SFTConfig"):
        load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.distill.trainer.max_completion_length=8"])
    with pytest.raises(RecipeError, match="endpoint teacher returns text"):
        load_recipe(
            ROOT / "recipes/finance.yaml",
            "tiny",
            ["stages.distill.teacher.endpoint=http://127.0.0.1:8000/v1"],
        )


def test_recipe_outside_recipes_gets_the_shared_profile_under_its_own(tmp_path, monkeypatch):
    # Regression: finance.yaml has its own `profiles.tiny` block; a copy kept outside recipes/
    # used that block alone, and `-p tiny` ran with the full recipe's Qwen3-32B teacher.
    copy = tmp_path / "elsewhere" / "finance.yaml"
    copy.parent.mkdir()
    copy.write_text((ROOT / "recipes/finance.yaml").read_text())
    monkeypatch.chdir(ROOT)  # the CLI runs from the project root
    r = load_recipe(copy, "tiny")
    assert r.models.teacher == "tiny://teacher"  # recipes/profiles/tiny.yaml applied
    assert r.stages.curate.shard_size == 300  # the recipe's own profiles.tiny on top of it
    # run from elsewhere, with no shared profile to find, the own block still applies alone
    monkeypatch.chdir(tmp_path)
    r = load_recipe(copy, "tiny")
    assert r.stages.curate.shard_size == 300


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_trainer_reporting_to_an_integration_that_is_not_installed_fails_validation():
    with pytest.raises(RecipeError) as err:
        load_recipe(
            ROOT / "recipes/finance.yaml", "tiny", ["stages.sft.trainer.report_to=[tensorboard, wandb]"]
        )
    assert "stages.sft.trainer.report_to: wandb is not installed here" in str(err.value)
    assert "tensorboard is not" not in str(err.value)
    ok = load_recipe(
        ROOT / "recipes/finance.yaml", "tiny", ["stages.sft.trainer.report_to=[tensorboard, mlflow]"]
    )
    assert ok.stages.sft.trainer["report_to"] == ["tensorboard", "mlflow"]
