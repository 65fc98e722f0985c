"""The stage descriptor contract: a stage declared in `stages.registry.STAGES` alone is enabled,
fingerprinted, preflighted, run and recorded by the pipeline, with no other file edited."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from verticalft.pipeline import PreflightFailed, enabled_stages, preflight, run_recipe, stage_fingerprints
from verticalft.recipe import Recipe, load_recipe
from verticalft.rundir import RunDir, fingerprint, hash_file
from verticalft.stages import registry
from verticalft.stages.base import StageContext, StageResult

ROOT = Path(__file__).resolve().parents[1]
CALLS: list[str] = []


def toy_run(ctx: StageContext) -> StageResult:
    """The toy stage's `run`: counts the eval rows it was given, writes one file."""
    CALLS.append(ctx.stage)
    rows = Path(ctx.recipe.data.eval.path).read_text().splitlines()
    out = ctx.dir / "count.txt"
    out.write_text(str(len(rows)))
    return StageResult(outputs={"count": str(out)}, metrics={"rows": len(rows)}, summary=f"{len(rows)} rows")


TOY = registry.Stage(
    name="toy",
    inputs=lambda d: [d.eval],
    enabled_when=lambda r: r.description == "with toy",
    section_from=lambda r: {"greeting": "hello"},
    entry=f"{__name__}:toy_run",
)


def _recipe(tmp_path: Path, description: str = "with toy") -> Recipe:
    teacher = tmp_path / "teacher"
    teacher.mkdir(exist_ok=True)
    (teacher / "tokenizer.json").write_text("{}")  # a folder preflight accepts as a model
    (tmp_path / "eval.jsonl").write_text(
        '{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": "4"}\n'
    )
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: toy_recipe\ndescription: {description}\nmodels: {{teacher: {teacher}}}\n"
        f"data: {{eval: {{path: {tmp_path / 'eval.jsonl'}}}}}\ncompute: {{gpu: cpu}}\n"
    )
    return load_recipe(path)


@pytest.fixture
def with_toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "STAGES", (*registry.STAGES, TOY))
    CALLS.clear()


def test_a_stage_in_the_list_is_enabled_only_when_its_descriptor_says(with_toy, tmp_path):
    # no section of the shipped stages: cost/route need eval or bench, tiny_models a tiny:// model
    assert enabled_stages(_recipe(tmp_path)) == ["toy"]
    assert enabled_stages(_recipe(tmp_path, "without")) == []


def test_its_fingerprint_is_its_section_and_its_input_files(with_toy, tmp_path):
    r = _recipe(tmp_path)
    eval_path = tmp_path / "eval.jsonl"
    expected = fingerprint(
        {
            "stage": "toy",
            "section": {"greeting": "hello"},
            "files": {str(eval_path): hash_file(eval_path)},
            "sources": [r.data.eval.model_dump()],
            "models": r.models.model_dump(),
            "evaluation": r.evaluation.model_dump(),
            "seed": 42,
            "prev": "",
        }
    )
    assert stage_fingerprints(r, ["toy"]) == {"toy": expected}
    eval_path.write_text('{"prompt": "3+3", "answer": "6"}\n')  # an input file edited: a new fingerprint
    assert stage_fingerprints(r, ["toy"])["toy"] != expected


def test_its_missing_input_file_stops_the_run_before_any_work(with_toy, tmp_path):
    r = _recipe(tmp_path)
    (tmp_path / "eval.jsonl").unlink()
    assert preflight(r, ["toy"]) == [
        f"{tmp_path / 'eval.jsonl'}: file not found (needed by toy; paths resolve from {Path.cwd()})"
    ]
    with pytest.raises(PreflightFailed):
        run_recipe(r, RunDir(tmp_path / "run"), echo=lambda s: None)
    assert CALLS == []


def test_run_recipe_runs_it_records_it_and_skips_it_when_done(with_toy, tmp_path):
    r, run = _recipe(tmp_path), RunDir(tmp_path / "run")
    outcomes = run_recipe(r, run, echo=lambda s: None)
    assert [(o.stage, o.status, o.summary) for o in outcomes] == [("toy", "done", "2 rows")]
    assert CALLS == ["toy"]
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["stages"]["toy"]["metrics"] == {"rows": 2}
    assert (tmp_path / "run" / "toy" / "count.txt").read_text() == "2"
    assert [o.status for o in run_recipe(r, run, echo=lambda s: None)] == ["skipped"]
    assert CALLS == ["toy"]
    with pytest.raises(PreflightFailed, match="unknown stage 'toyy' \\(did you mean 'toy'\\?\\)"):
        run_recipe(r, run, only=["toyy"], echo=lambda s: None)


def test_sft_without_an_eval_set_is_not_told_it_needs_data_sft():
    # data.sft is given; data.eval is optional for sft (its quick eval is skipped without one).
    # Before the descriptors, any absent input of sft/dpo was reported as "needs data.sft".
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["data.eval=null", "stages.eval=null"])
    assert not [p for p in preflight(r, ["sft"]) if "needs data" in p]
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["data.preferences=null", "data.eval=null"])
    assert [p for p in preflight(r, ["dpo"]) if "needs data" in p] == ["stages.dpo: needs data.preferences"]


def test_every_shipped_stage_names_the_run_function_of_its_module():
    for spec in registry.STAGES:
        module = importlib.import_module(f"verticalft.stages.{spec.name}")
        assert spec.runner() is module.run


def test_the_groups_follow_the_descriptors():
    assert registry.stage_order() == [
        "tiny_models",
        "curate",
        "cpt",
        "sft",
        "dpo",
        "distill",
        "quantize",
        "eval",
        "bench",
        "cost",
        "route",
        "export",
    ]
    assert registry.model_stages() == ["cpt", "sft", "dpo"]
    assert registry.training_stages() == ["cpt", "sft", "dpo", "distill"]
    assert registry.serving_stages() == ["quantize", "eval", "bench"]


def test_a_stage_reads_its_own_section_typed_and_is_told_when_it_is_absent(tmp_path):
    from verticalft.recipe import DpoStage, SftStage

    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.sft.max_length=384"])
    section = StageContext(r, RunDir(tmp_path), "sft").stage_section(SftStage)
    assert isinstance(section, SftStage) and section.max_length == 384  # the override above
    with pytest.raises(TypeError, match=r"stages\.sft is a SftStage, not a DpoStage"):
        StageContext(r, RunDir(tmp_path), "sft").stage_section(DpoStage)
    no_sft = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.sft=null"])
    with pytest.raises(RuntimeError, match=r"stages\.sft: the sft stage ran without its recipe section"):
        StageContext(no_sft, RunDir(tmp_path), "sft").stage_section(SftStage)


def test_a_training_set_absent_from_the_recipe_is_named_by_its_key(tmp_path):
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["data.preferences=null"])
    with pytest.raises(ValueError, match=r"^stages\.dpo: needs data\.preferences$"):
        StageContext(r, RunDir(tmp_path), "dpo").set_sources("preferences")
    # the recipe's own sources when curate has not run in this run
    sft = StageContext(r, RunDir(tmp_path), "sft").set_sources("sft")
    assert [s.path for s in sft] == [s.path for s in r.data.sft or []] and sft


def test_training_of_names_the_training_stages_for_a_stage_that_trains_nothing():
    assert registry.training_of("dpo").pairs and registry.training_of("cpt").trains_on == "corpus"
    with pytest.raises(ValueError, match="eval is not a training stage; those are cpt, sft, dpo, distill"):
        registry.training_of("eval")
