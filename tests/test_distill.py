"""Distillation plumbing on tiny models built on the spot: vocab preflight branches, the teacher
cache (its loss equals the online loss at k = vocab size), and a refused recipe."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from verticalft.distill import cache as tc
from verticalft.distill.batching import DistillCollator, chat_example
from verticalft.distill.preflight import check_pair
from verticalft.distill.trainer import LogitDistillTrainer, LossSettings
from verticalft.models import build_tiny_models, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "teacher": {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256},
    "student": {"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128},
}


def _texts(n=400):
    rows = [json.loads(line) for line in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()]
    return [r["text"] for r in rows[:n]]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Two tiny model families: same recipe, different tokenizers (vocab 1024 vs 640)."""
    root = tmp_path_factory.mktemp("tiny")
    a = build_tiny_models(root / "a", _texts(), SPECS, vocab_size=1024, seed=0)
    b = build_tiny_models(root / "b", _texts(), SPECS, vocab_size=640, seed=0)
    return a, b


@pytest.fixture(scope="module")
def padded_student(families, tmp_path_factory):
    """The student with spare embedding rows (like Qwen2.5-7B: 152,064 rows, 151,665 tokens)."""
    a, _ = families
    model = load_model(a["student"])
    tok = load_tokenizer(a["student"])
    model.resize_token_embeddings(len(tok) + 64)  # spare rows no token uses
    out = tmp_path_factory.mktemp("padded") / "student"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), len(tok)


def test_identical_tokenizers_go(families):
    a, _ = families
    r = check_pair(a["teacher"], a["student"])
    assert r.verdict == "identical" and r.ok and r.overlap == 1.0


def test_padded_embedding_rows_trim_and_go(families, padded_student):
    a, _ = families
    path, size = padded_student
    r = check_pair(a["teacher"], path)
    assert r.verdict == "padded" and r.ok
    assert r.student_rows > size == r.tokenizer_size == r.teacher_rows
    assert "trimmed" in r.message()


def test_different_tokenizers_refuse_naming_both_and_the_way_out(families):
    a, b = families
    r = check_pair(a["teacher"], b["student"])
    assert r.verdict == "different" and not r.ok
    msg = r.message()
    assert a["teacher"] in msg and b["student"] in msg
    assert "kind: sequence" in msg and "GOLD" in msg and "vocabularies differ" in msg


def test_logit_recipe_with_different_tokenizers_stops_before_any_work(families, tmp_path):
    from verticalft.pipeline import StageFailed, run_recipe
    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir

    a, b = families
    overrides = [
        f"models.teacher={a['teacher']}",
        f"models.students=[{a['student']}, {b['student']}]",
        "stages.distill.kind=logits",
    ]
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", overrides)
    with pytest.raises(StageFailed) as err:
        run_recipe(r, RunDir(tmp_path), until="distill", echo=lambda s: None)
    text = str(err.value)
    assert "cannot start" in text and b["student"] in text and "kind: sequence" in text
    assert a["student"] not in text.replace(a["teacher"], "")  # the matching student is not blamed
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no stage ran
    # sequence-level distillation works across tokenizers: no refusal
    seq = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [*overrides[:2], "stages.distill.kind=sequence"])
    from verticalft.pipeline import distill_vocab_problems

    assert distill_vocab_problems(seq) == []


def _batch(tok, n=6, max_length=96):
    rows = [json.loads(line) for line in (ROOT / "data_pipelines/finance/sample/sft.jsonl").open()][:n]
    examples = [chat_example(tok, r["messages"], max_length) for r in rows]
    return examples


def test_chat_example_masks_only_the_assistant_answer(families):
    a, _ = families
    tok = load_tokenizer(a["teacher"])
    msgs = [
        {"role": "user", "content": "Categorise: 8.63 USD POS ADP PAYROLL"},
        {"role": "assistant", "content": "payroll"},
    ]
    ex = chat_example(tok, msgs, 256)
    answer = tok.decode([i for i, m in zip(ex["input_ids"], ex["response_mask"], strict=True) if m])
    assert answer == "payroll<|end|>"


def test_cache_loss_equals_online_loss_at_k_equal_vocab(families, tmp_path):
    a, _ = families
    tok = load_tokenizer(a["teacher"])
    teacher, student = load_model(a["teacher"]), load_model(a["student"])
    examples = _batch(tok)
    V = len(tok)
    rows = tc.teacher_rows(
        teacher, examples, k=V, temperature=2.0, batch_size=4, vocab_size=V, pad_id=tok.pad_token_id
    )
    cache = tc.write_cache(tmp_path / "c", rows, len(examples), V, V, {"teacher": "t"})
    assert tc.is_complete(cache.root) and len(cache) == len(examples)
    # one row per response token of every example
    assert cache.meta["tokens"] == sum(sum(e["response_mask"][1:]) for e in examples)

    batch = DistillCollator(tok.pad_token_id)([{**e, "example_index": i} for i, e in enumerate(examples)])
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True)
    losses = {}
    for kind in ("forward_kl", "reverse_kl", "jsd", "tv"):
        settings = LossSettings(kind, temperature=2.0, beta=0.5, ce_weight=0.3, vocab_size=V)
        online = LogitDistillTrainer(model=student, args=args, settings=settings, teacher=teacher)
        cached = LogitDistillTrainer(model=student, args=args, settings=settings, cache=cache)
        with torch.no_grad():
            lo = online.compute_loss(student, dict(batch))
            lc = cached.compute_loss(student, dict(batch))
        losses[kind] = (float(lo), float(lc))
        # the cache stores fp16 log-probs: equal to that rounding
        assert abs(float(lo) - float(lc)) < 2e-3 * max(1.0, abs(float(lo))), (kind, lo, lc)
    assert len({round(v[0], 4) for v in losses.values()}) == 4  # the divergences really differ


def test_cache_refuses_a_batch_it_was_not_built_for(families, tmp_path):
    a, _ = families
    tok = load_tokenizer(a["teacher"])
    teacher, student = load_model(a["teacher"]), load_model(a["student"])
    examples = _batch(tok, n=3)
    cache = tc.write_cache(
        tmp_path / "c",
        tc.teacher_rows(
            teacher, examples, k=8, temperature=1.0, batch_size=4, vocab_size=None, pad_id=tok.pad_token_id
        ),
        3,
        8,
        len(tok),
        {},
    )
    assert (
        cache.bytes_per_token() < 8 * 2 + 8 * 2 + 4 + 8
    )  # uint16 ids + fp16 log-probs + fp32 tail (+ offsets)
    other = _batch(tok, n=3, max_length=40)  # truncated differently: fewer response tokens
    batch = DistillCollator(tok.pad_token_id)([{**e, "example_index": i} for i, e in enumerate(other)])
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True)
    trainer = LogitDistillTrainer(model=student, args=args, settings=LossSettings(), cache=cache)
    with pytest.raises(RuntimeError, match="rebuild the cache"):
        trainer.compute_loss(student, batch)


def test_killed_cache_build_is_not_taken_as_done(families, tmp_path):
    a, _ = families
    tok = load_tokenizer(a["teacher"])
    teacher = load_model(a["teacher"])
    examples = _batch(tok, n=4)

    def dies():
        for i, row in enumerate(
            tc.teacher_rows(
                teacher,
                examples,
                k=8,
                temperature=1.0,
                batch_size=2,
                vocab_size=None,
                pad_id=tok.pad_token_id,
            )
        ):
            if i == 2:
                raise KeyboardInterrupt
            yield row

    with pytest.raises(KeyboardInterrupt):
        tc.write_cache(tmp_path / "c", dies(), 4, 8, len(tok), {})
    assert not tc.is_complete(tmp_path / "c")


def _stage_context(teacher: str, run_root: Path):
    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir
    from verticalft.stages.base import StageContext

    sets = [f"stages.distill.teacher.model={teacher}", "stages.distill.top_k=16", "evaluation.batch_size=2"]
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", overrides=sets)
    return StageContext(recipe, RunDir(run_root), "distill")


def _assert_same_cache(got, want):
    assert len(got) == len(want)
    for name in ("offsets", "ids", "logprobs", "tail"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_stage_cache_is_built_in_parts_merged_as_one_pass_then_reused(
    families, tmp_path, monkeypatch, caplog
):
    """build_cache in one process: 5 examples in teacher batches of 2 make parts [0, 2), [2, 4),
    [4, 5) (64 parts asked, each a whole batch); merged, they equal one pass over the examples and
    the parts folder is gone. A second call reuses the cache without loading the teacher (0 s)."""
    from verticalft.distill import teacher as dt

    a, _ = families
    tok = load_tokenizer(a["teacher"])
    V = len(tok)
    ctx = _stage_context(a["teacher"], tmp_path / "run")
    examples = _batch(tok, n=5)
    caplog.set_level(logging.INFO, logger="verticalft")
    cache, seconds = dt.build_cache(ctx, None, tok, examples, V)  # None: build_cache loads the teacher
    assert "rank 0 builds parts [0, 1, 2] of 3 (0 of its 3 done before)" in caplog.text
    caplog.clear()
    assert cache.meta["parts"] == 3 and seconds > 0
    assert cache.root.parent == tmp_path / "run" / "teacher_cache"
    assert sorted(p.name for p in cache.root.parent.iterdir()) == [cache.root.name, cache.root.name + ".lock"]
    rows = tc.teacher_rows(
        load_model(a["teacher"]),
        examples,
        k=16,
        temperature=2.0,
        batch_size=2,
        vocab_size=V,
        pad_id=tok.pad_token_id,
    )
    _assert_same_cache(cache, tc.write_cache(tmp_path / "one", rows, 5, 16, V, {}))

    monkeypatch.setattr(dt, "load_teacher", lambda *args: pytest.fail("loaded the teacher to reuse a cache"))
    again, seconds = dt.build_cache(ctx, None, tok, examples, V)
    assert (again.root, seconds) == (cache.root, 0.0)
    assert f"teacher cache: reusing {cache.root} (rank 0)" in caplog.text


def test_stage_cache_with_a_part_missing_is_not_merged_and_a_rerun_builds_only_that_part(
    families, tmp_path, monkeypatch, caplog
):
    """4 examples in batches of 2: parts [0, 2) and [2, 4). A run that built only part 0 (as if
    the rank owning part 1 died) refuses to merge, naming the part; the rerun builds part 1 alone."""
    from verticalft.distill import teacher as dt

    a, _ = families
    tok = load_tokenizer(a["teacher"])
    V = len(tok)
    ctx = _stage_context(a["teacher"], tmp_path / "run")
    examples = _batch(tok, n=4)
    teacher = load_model(a["teacher"])
    caplog.set_level(logging.INFO, logger="verticalft")
    monkeypatch.setattr(tc, "parts_of_rank", lambda n_parts, rank, world: [0])
    with pytest.raises(RuntimeError, match=r"teacher cache: parts \['part-00001'\] are not finished"):
        dt.build_cache(ctx, teacher, tok, examples, V)
    monkeypatch.undo()
    cache, _ = dt.build_cache(ctx, teacher, tok, examples, V)
    out = caplog.text
    assert "rank 0 builds parts [1] of 2 (1 of its 2 done before)" in out
    assert "merging 2 parts" in out and cache.meta["parts"] == 2
    rows = tc.teacher_rows(
        teacher, examples, k=16, temperature=2.0, batch_size=2, vocab_size=V, pad_id=tok.pad_token_id
    )
    _assert_same_cache(cache, tc.write_cache(tmp_path / "one", rows, 4, 16, V, {}))


def _hub_cache(root, repos: dict[str, str]) -> None:
    """A Hugging Face hub cache holding `repo id → folder` (tokenizer and config files only, as a
    tokenizer check downloads them), laid out as huggingface_hub lays it out."""
    for repo, folder in repos.items():
        base = root / f"models--{repo.replace('/', '--')}"
        snapshot = base / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        for f in Path(folder).iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, snapshot / f.name)
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text("0" * 40)


@pytest.mark.slow  # four `verticalft` processes (validate, run)
def test_hub_id_pairs_are_checked_before_any_work(families, tmp_path):
    # finance.yaml used to distil Qwen3-32B into Qwen2.5 students with kind logits: different
    # tokenizers, found by the distill stage after CPT, SFT and DPO were paid for. Hub ids are now
    # checked from their tokenizer files (here from a local hub cache; offline, as in CI).
    a, b = families
    cache = tmp_path / "hub"
    _hub_cache(
        cache,
        {
            "Qwen/Qwen3-32B": a["teacher"],
            "Qwen/Qwen3-8B": a["student"],
            "Qwen/Qwen2.5-7B-Instruct": b["student"],
        },
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    sets = ["--set", "models.teacher=Qwen/Qwen3-32B", "--set", "stages.distill.kind=logits"]

    def vft(*args):
        return subprocess.run(
            [sys.executable, "-m", "verticalft.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )

    mixed = vft("validate", "recipes/finance.yaml", "-p", "tiny", *sets, "--set",
                "models.students=[Qwen/Qwen3-8B, Qwen/Qwen2.5-7B-Instruct]")  # fmt: skip
    assert mixed.returncode == 2, mixed.stdout + mixed.stderr
    assert "Qwen/Qwen2.5-7B-Instruct do not share a tokenizer" in mixed.stderr.replace("\n", " ")
    assert "kind: sequence" in mixed.stderr
    run = vft("run", "recipes/finance.yaml", "-p", "tiny", "--runs-dir", str(tmp_path / "runs"), *sets,
              "--set", "models.students=[Qwen/Qwen3-8B, Qwen/Qwen2.5-7B-Instruct]")  # fmt: skip
    assert run.returncode != 0 and "cannot start" in run.stdout + run.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("DONE.json"))
    same = vft(
        "validate", "recipes/finance.yaml", "-p", "tiny", *sets, "--set", "models.students=[Qwen/Qwen3-8B]"
    )
    assert same.returncode == 0 and "could not check" not in same.stdout
    missing = vft(
        "validate", "recipes/finance.yaml", "-p", "tiny", *sets, "--set", "models.students=[Qwen/Qwen3-14B]"
    )
    assert missing.returncode == 0 and "could not check the tokenizers" in missing.stdout.replace("\n", " ")
