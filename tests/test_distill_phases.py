"""The distill phases' plumbing: which phases a student gets, documents packed as CPT packs them,
the token budget, the phase's trainer keys, and the recipe errors that say what to fix."""

import json
from pathlib import Path

import pytest
from datasets import Dataset

from verticalft.distill.phases import budget_rows, packed_documents, tokens_of
from verticalft.models import train_tiny_tokenizer
from verticalft.recipe import DistillPhase, DistillStage, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
FINANCE = ROOT / "recipes" / "finance.yaml"


@pytest.fixture(scope="module")
def tokenizer():
    rows = [json.loads(line) for line in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()]
    return train_tiny_tokenizer([r["text"] for r in rows[:200]], 512)


def test_pruned_students_heal_on_the_corpus_first_and_others_keep_one_phase():
    cfg = DistillStage()
    heal, task = cfg.phases_for("prune://teacher?layers=4", has_corpus=True, has_replay=True)
    assert (heal.name, heal.data, task.name, task.data) == ("heal", ["corpus", "replay"], "task", ["sft"])
    assert [
        p.data for p in cfg.phases_for("prune://teacher?layers=4", has_corpus=True, has_replay=False)
    ] == [
        ["corpus"],
        ["sft"],
    ]
    # no corpus to heal on, a student that was never pruned, or another kind: the one SFT phase
    for ref, corpus, kind in [("prune://teacher?layers=4", False, "logits"), ("Qwen/Qwen3-8B", True, "logits"),
                              ("prune://teacher?layers=4", True, "sequence")]:  # fmt: skip
        only = DistillStage(kind=kind).phases_for(ref, has_corpus=corpus, has_replay=True)
        assert [(p.name, p.data) for p in only] == [("task", ["sft"])]
    mine = [DistillPhase(name="a", data="corpus"), DistillPhase(name="b", data="sft", max_steps=3)]
    # phases are logit distillation's: the other kinds (teacher answers, on-policy) train on sft
    seq = DistillStage(kind="sequence", phases=mine).phases_for("x", has_corpus=True, has_replay=True)
    assert [(p.name, p.data) for p in seq] == [("task", ["sft"])]
    assert (
        DistillStage(phases=mine).phases_for("prune://teacher?layers=4", has_corpus=True, has_replay=True)
        == mine
    )


def test_documents_are_packed_wrapped_into_full_rows_every_token_a_target(tokenizer):
    docs = ["Net revenue rose 12% to $4.1 billion.", "The board declared a dividend.", "Loans grew."]
    rows = packed_documents(Dataset.from_dict({"text": docs}), tokenizer, max_length=8)
    # by hand: each document's tokens with EOS, concatenated, cut into rows of 8
    stream = [t for d in docs for t in tokenizer(d + tokenizer.eos_token)["input_ids"]]
    assert [r["input_ids"] for r in rows] == [stream[i : i + 8] for i in range(0, len(stream), 8)]
    assert all(r["response_mask"] == [1] * len(r["input_ids"]) for r in rows)
    # a budget reads documents in order only until it is reached (batches of one: the first
    # document), and keeps the rows the budget takes: full rows until their tokens reach it
    first = len(tokenizer(docs[0] + tokenizer.eos_token)["input_ids"])
    limited = packed_documents(Dataset.from_dict({"text": docs}), tokenizer, 8, limit=first, batch=1)
    assert [r["input_ids"] for r in limited] == [stream[:first][i : i + 8] for i in range(0, first, 8)]
    limited = packed_documents(Dataset.from_dict({"text": docs}), tokenizer, 8, limit=9, batch=100)
    assert [r["input_ids"] for r in limited] == [stream[0:8], stream[8:16]]


def test_a_token_budget_cycles_rows_in_order_up_to_it_the_last_row_whole():
    ex = [{"input_ids": [0] * n, "response_mask": [0] + [1] * (n - 1)} for n in (5, 3, 4)]
    assert budget_rows(ex, None) == [0, 1, 2]
    assert budget_rows(ex, 8) == [0, 1]  # 5 + 3 = 8
    assert budget_rows(ex, 9) == [0, 1, 2]  # 12 ≥ 9
    assert budget_rows(ex, 20) == [0, 1, 2, 0, 1]  # 5+3+4+5+3 = 20: a second pass over the rows
    assert tokens_of(ex, [0, 1, 2, 0, 1]) == (20, 4 + 2 + 3 + 4 + 2)


def test_a_phase_sets_its_budget_and_loss_over_the_stage():
    cfg = DistillStage(loss="forward_kl", temperature=2.0, ce_weight=0.5)
    p = DistillPhase(name="heal", data="corpus", max_tokens=1e6, loss="jsd", trainer={"learning_rate": 3e-4})
    assert p.trainer_overrides() == {"learning_rate": 3e-4, "num_train_epochs": 1, "max_steps": -1}
    assert DistillPhase(name="t", data="sft", max_steps=7).trainer_overrides() == {"max_steps": 7}
    assert DistillPhase(name="t", data="sft").trainer_overrides() == {}
    assert cfg.phase_settings(p) == {"loss": "jsd", "temperature": 2.0, "beta": 0.5, "ce_weight": 0.5}
    assert cfg.input_key(p) == "corpus (1e+06 tokens)"
    assert cfg.input_key(DistillPhase(name="t", data="sft", temperature=1.0)) == "sft T=1"


def test_bad_phases_are_every_problem_with_its_key_path():
    sets = [
        "stages.distill.phases=[{name: a, data: [corpus, sft]}, {name: a, data: sft, max_tokens: 5, max_steps: 2},"
        " {name: b, data: sft, trainer: {learnin_rate: 1}}, {name: c, data: corpuss}]"
    ]
    with pytest.raises(RecipeError) as err:
        load_recipe(FINANCE, "tiny", sets)
    text = str(err.value)
    assert "stages.distill.phases.0" in text and "conversations (sft) or documents" in text
    assert "stages.distill.phases.1" in text and "max_tokens or max_steps, not both" in text
    assert "stages.distill.phases.3.data: Value error, 'corpuss' is not corpus, replay or sft" in text
    with pytest.raises(RecipeError) as err:
        load_recipe(
            FINANCE, "tiny", ["stages.distill.phases=[{name: b, data: sft, trainer: {learnin_rate: 1}}]"]
        )
    assert "stages.distill.phases.0.trainer.learnin_rate" in str(err.value)
