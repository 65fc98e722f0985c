"""Multi-turn conversations with system turns through distillation (sequence, on_policy, logits),
teacher generation and eval. Tiny models built on the spot; the expected
contexts and rendered prompts are written by hand or rendered by the tokenizer's own
`apply_chat_template`, never by the code under test."""

import json
from pathlib import Path

import pytest

from verticalft.data import DataError
from verticalft.distill.generate import Generation
from verticalft.models import build_tiny_models, load_model, load_tokenizer
from verticalft.recipe import Source, load_recipe
from verticalft.rundir import RunDir
from verticalft.scoring import evaluate_model, load_items
from verticalft.stages.base import PartialFailure, StageContext

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "teacher": {"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128},
    "student": {"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 64},
}
SYSTEM = {"role": "system", "content": "You are a bookkeeper. Answer with one word."}
U1 = {"role": "user", "content": "Categorise: 8.63 USD POS ADP PAYROLL"}
A1 = {"role": "assistant", "content": "payroll"}
U2 = {"role": "user", "content": "And: 41.20 USD CITY WATER UTILITY"}
A2 = {"role": "assistant", "content": "utilities"}
CONV = [SYSTEM, U1, A1, U2, A2]  # a system turn and two user/assistant exchanges
# what the teacher (sequence) or the student (on_policy) must answer: all before the last answer
CONTEXT = [SYSTEM, U1, A1, U2]
PLAIN = [
    {"role": "user", "content": "Categorise: 12.00 USD NETFLIX"},
    {"role": "assistant", "content": "dining"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rows = [json.loads(line) for line in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()]
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_models(root, [r["text"] for r in rows[:200]], SPECS, vocab_size=512, seed=0)


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _distill_ctx(tiny, tmp_path, kind: str) -> StageContext:
    sft = _jsonl(tmp_path / "sft.jsonl", [{"messages": CONV}, {"messages": PLAIN}])
    r = load_recipe(
        ROOT / "recipes/finance.yaml",
        "tiny",
        [f"models.teacher={tiny['teacher']}", f"models.students=[{tiny['student']}]",
         f"stages.distill.kind={kind}", f"data.sft.path={sft}", "evaluation.max_items=2",
         "stages.distill.trainer.num_train_epochs=1", "stages.distill.generation.backend=hf"],
    )  # fmt: skip
    return StageContext(r, RunDir(tmp_path / "run"), "distill")


def test_sequence_teacher_answers_the_whole_context_system_turn_included(tiny, tmp_path, monkeypatch):
    """The teacher gets [system, user 1, assistant 1, user 2] (it used to get nothing for a
    conversation opening on a system turn), the student trains on that context plus its answer,
    and a changed system turn is a new sequences key: the teacher is asked again."""
    from verticalft.distill import generate as g
    from verticalft.distill import teacher as teacher_side
    from verticalft.stages import distill

    asked: list = []

    def generate_hf(model, tokenizer, chats, max_new_tokens, batch_size, kwargs=None):
        asked.append(chats)
        return [Generation(f"answer {i}", "stop") for i in range(len(chats))]

    monkeypatch.setattr(g, "generate_hf", generate_hf)
    ctx = _distill_ctx(tiny, tmp_path, "sequence")
    result = distill.run(ctx)
    assert asked == [[CONTEXT, PLAIN[:1]]]
    saved = json.loads((ctx.dir / "teacher_sequences.json").read_text())
    assert saved["rows"] == [
        {"messages": [*CONTEXT, {"role": "assistant", "content": "answer 0"}]},
        {"messages": [*PLAIN[:1], {"role": "assistant", "content": "answer 1"}]},
    ]
    assert result.metrics["generations"]["prompts"] == 2 and result.metrics["students"]["student"]["train"]

    # the saved answers are reused for the same contexts, not for a context with another system turn
    tokenizer = load_tokenizer(tiny["teacher"])
    assert teacher_side.sequence_rows(ctx, None, tokenizer, [CONTEXT, PLAIN[:1]])[0] == saved["rows"]
    assert len(asked) == 1
    other = [{"role": "system", "content": "You are an auditor."}, *CONTEXT[1:]]
    rows, _ = teacher_side.sequence_rows(ctx, None, tokenizer, [other])
    assert asked[-1] == [other] and rows[0]["messages"][0] == other[0]


def test_on_policy_student_generates_in_the_whole_context(tiny, tmp_path, monkeypatch):
    """TRL's DistillationTrainer gets the conversational prompts [system, user 1, assistant 1,
    user 2] and [user]; the trainer is replaced by one that keeps its dataset and stops."""
    import trl

    from verticalft.stages import distill

    seen = {}

    class Keep:
        def __init__(self, **kwargs):
            seen["data"] = kwargs["train_dataset"]
            seen["tokenizer"] = kwargs["processing_class"]
            raise RuntimeError("dataset kept")

    monkeypatch.setattr(trl, "DistillationTrainer", Keep)
    with pytest.raises(PartialFailure, match="dataset kept"):
        distill.run(_distill_ctx(tiny, tmp_path, "on_policy"))
    assert seen["data"]["prompt"] == [CONTEXT, PLAIN[:1]]
    # what TRL renders for the student to continue: the system turn and the first exchange
    tok = seen["tokenizer"]
    rendered = tok.apply_chat_template(seen["data"]["prompt"][0], tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|system|>\nYou are a bookkeeper. Answer with one word.<|end|>\n"
        "<|user|>\nCategorise: 8.63 USD POS ADP PAYROLL<|end|>\n<|assistant|>\npayroll<|end|>"
        "<|user|>\nAnd: 41.20 USD CITY WATER UTILITY<|end|>\n<|assistant|>\n"
    )


def test_logit_examples_keep_the_system_turn_and_mask_every_answer(tiny):
    """`logits` trains on whole conversations: the ids are the template's for all five turns and
    the mask covers both assistant answers (each with its end-of-turn token), nothing else."""
    from verticalft.distill.batching import chat_example

    tok = load_tokenizer(tiny["teacher"], None, require_mask=True)
    ex = chat_example(tok, CONV, 512)
    assert ex["input_ids"] == list(
        tok.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"]
    )
    masked = [i if m else None for i, m in zip(ex["input_ids"], ex["response_mask"], strict=True)]
    spans, cur = [], []
    for i in [*masked, None]:
        if i is None and cur:
            spans.append(tok.decode(cur))
            cur = []
        elif i is not None:
            cur.append(i)
    assert spans == ["payroll<|end|>", "utilities<|end|>"]


def test_hf_eval_renders_the_system_turn(tiny, tmp_path):
    """evaluate_model gives the model the template's rendering of [system, user] for an item with
    `system`, and of the whole chat for a `messages` item."""
    model, tok = load_model(tiny["teacher"]), load_tokenizer(tiny["teacher"])
    items = load_items(
        Source(
            path=_jsonl(
                tmp_path / "eval.jsonl",
                [
                    {"system": SYSTEM["content"], "prompt": U1["content"], "answer": "payroll"},
                    {"messages": CONTEXT, "answer": "utilities"},
                ],
            )
        )
    )
    given = []
    real = model.generate

    def generate(**kw):
        given.append(kw["input_ids"][0].tolist())
        return real(**kw)

    model.generate = generate
    evaluate_model(model, tok, items, max_new_tokens=2, batch_size=1)
    expected = [
        tok.apply_chat_template([SYSTEM, U1], tokenize=True, add_generation_prompt=True, return_dict=True),
        tok.apply_chat_template(CONTEXT, tokenize=True, add_generation_prompt=True, return_dict=True),
    ]
    assert given == [list(e["input_ids"]) for e in expected]


def test_vllm_eval_sends_each_items_messages_and_scores_them(tiny, tmp_path, monkeypatch):
    """The eval stage's vLLM jobs carry each item's chat; a `messages` item and a `system` item
    score by their answers; the eval file keeps their fields, so `item_key` finds them again."""
    from verticalft.scoring import item_key
    from verticalft.serving import offline
    from verticalft.stages import eval as eval_stage

    rows = [
        {"prompt": "Categorise: 3.00 USD SHELL", "answer": "fuel"},  # prompt-only, as before
        {"system": SYSTEM["content"], "prompt": U1["content"], "answer": "payroll"},
        {"messages": CONTEXT, "answer": "utilities"},
        {"messages": [U1, A1, U2], "answer": "utilities"},
    ]
    path = _jsonl(tmp_path / "eval.jsonl", rows)
    r = load_recipe(
        ROOT / "recipes/finance.yaml", "tiny",
        [f"models.teacher={tiny['teacher']}", f"data.eval.path={path}", "stages.eval.backend=vllm",
         "data.general_eval=null"],
    )  # fmt: skip
    jobs = []

    def generate(js, work_dir, engine_args=None, env=None, timeout=None):
        jobs.extend(js)
        texts = ["fuel", "Payroll.", "utilities", "dining"]  # the last one wrong
        return {j.name: offline.Output(texts, ["stop"] * 4, [1] * 4, [-0.1] * 4) for j in js}

    monkeypatch.setattr(offline, "generate", generate)
    result = eval_stage.run(StageContext(r, RunDir(tmp_path / "run"), "eval"))
    assert [j.chats for j in jobs] == [
        [
            [{"role": "user", "content": "Categorise: 3.00 USD SHELL"}],
            [SYSTEM, U1],
            CONTEXT,
            [U1, A1, U2],
        ]
    ]
    assert result.metrics["models"]["base"]["domain"]["score"] == 0.75
    lines = [json.loads(x) for x in Path(result.outputs["base"]).read_text().splitlines()]
    assert [x["correct"] for x in lines] == [True, True, True, False]
    assert [item_key(x) for x in lines] == [item_key(x) for x in rows]
    assert item_key(lines[0]) == "Categorise: 3.00 USD SHELL"  # a prompt-only item keys as before
    assert lines[2]["prompt"] == U2["content"] and lines[2]["messages"] == CONTEXT


def test_a_messages_item_ending_on_an_answer_names_file_and_line(tmp_path):
    from verticalft.cli import data_set_check

    good = {"prompt": "p", "answer": "a"}
    bad = {"messages": [U1, A1], "answer": "payroll"}
    path = _jsonl(tmp_path / "eval.jsonl", [good, bad])
    with pytest.raises(
        DataError, match=r"eval.jsonl:2: `messages` must end on a user turn .* not 'assistant'"
    ):
        load_items(Source(path=path))
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [f"data.eval.path={path}"])
    _, problems, _ = data_set_check(r)
    assert [p for p in problems if "eval.jsonl" in p] == [
        f"{path}:2: `messages` must end on a user turn (the one the model answers), not 'assistant'"
    ]


def test_decontamination_matches_the_user_turns_of_a_messages_item(tmp_path):
    from verticalft.curation.sources import eval_prompts

    path = _jsonl(
        tmp_path / "eval.jsonl",
        [
            {"id": "q1", "prompt": "Categorise: 3.00 USD SHELL", "answer": "fuel"},
            {"id": "q2", "system": "Be brief.", "messages": [U1, A1, U2], "answer": "utilities"},
        ],
    )
    assert eval_prompts(Source(path=path)) == [
        ["q1", "Categorise: 3.00 USD SHELL"],
        ["q2", f"{U1['content']}\n{U2['content']}"],
    ]
