"""General ability on lm-eval tasks (`stages.eval.general`): lm-eval's own CLI on a real model,
its accuracy checked against log-likelihoods computed here with transformers, the shipped task's
data against its generator, and the problems preflight reports."""

import importlib.util
import json
import shlex
from pathlib import Path

import torch

from verticalft import general_eval
from verticalft.models import build_tiny_models, load_model, load_tokenizer
from verticalft.recipe import GeneralEval

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "data_pipelines/general/lm_eval"


def _items(n: int) -> list[dict]:
    return [json.loads(line) for line in (TASK_DIR / "general_mc.jsonl").read_text().splitlines()[:n]]


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Sum of log P(continuation | context), tokenized as lm-eval's hf model does: the pair
    encoded whole, the context's tokens cut off the front, no special tokens."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_lm_eval_accuracy_is_the_argmax_of_choice_log_likelihoods(tmp_path, monkeypatch):
    rows = [json.loads(x) for x in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()]
    spec = {"teacher": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}}
    folder = build_tiny_models(tmp_path / "m", [r["text"] for r in rows[:200]], spec, vocab_size=512, seed=0)[
        "teacher"
    ]
    cfg = GeneralEval(include_path=str(TASK_DIR), limit=12, batch_size=4)
    work = tmp_path / "work"
    # a run's model paths may be relative (runs/…) while lm-eval runs in the task folder
    monkeypatch.chdir(tmp_path)
    got = general_eval.evaluate(cfg, str(Path(folder).relative_to(tmp_path)), work, "hf")

    model, tok = load_model(folder), load_tokenizer(folder)
    model.eval()
    right = 0
    for it in _items(12):
        context = f"Question: {it['question']}\nAnswer:"  # the task's doc_to_text
        ll = [_loglikelihood(model, tok, context, " " + c) for c in it["choices"]]  # target_delimiter " "
        right += max(range(len(ll)), key=ll.__getitem__) == it["answer"]
    assert got.samples == {"verticalft_general_mc": 12}
    assert got.scores["verticalft_general_mc"] == right / 12
    # the command recorded is the one that ran: lm-eval's CLI, offline-able, on the CPU in fp32
    args = shlex.split(got.command)
    assert args[1:4] == ["-m", "lm_eval", "run"]
    assert args[args.index("--model_args") + 1] == f"pretrained={folder},dtype=float32"
    assert args[args.index("--include_path") + 1] == str(TASK_DIR)
    assert args[args.index("--limit") + 1] == "12"

    # a rerun with the same command keeps the finished result (its output may be gone)
    for f in (work / "lm_eval").rglob("*"):
        if f.is_file():
            f.unlink()
    assert general_eval.evaluate(cfg, str(Path(folder).relative_to(tmp_path)), work, "hf") == got

    # a metric the task does not report is named with the ones it does
    try:
        general_eval.evaluate(cfg.model_copy(update={"metric": "f1", "limit": 3}), str(folder), work, "hf")
    except general_eval.GeneralEvalError as exc:
        assert "reports no 'f1'" in str(exc) and "acc, acc_norm" in str(exc)
    else:
        raise AssertionError("an unknown metric must fail")


def test_command_line_options_follow_the_recipe(tmp_path):
    cfg = GeneralEval(
        tasks=["arc_easy", "verticalft_general_mc"],
        include_path=None,
        num_fewshot=5,
        apply_chat_template=True,
        model_args={"dtype": "bfloat16", "max_length": 2048},
    )
    args = general_eval.command(cfg, "/models/x", "hf", tmp_path / "out", on_gpu=False)
    assert args[args.index("--tasks") + 1] == "arc_easy,verticalft_general_mc"
    # the recipe's model_args override the CPU's float32
    assert args[args.index("--model_args") + 1] == "pretrained=/models/x,dtype=bfloat16,max_length=2048"
    assert args[args.index("--num_fewshot") + 1] == "5"
    assert "--apply_chat_template" in args and "--include_path" not in args and "--limit" not in args
    gpu = general_eval.command(GeneralEval(), "/models/x", "vllm", tmp_path / "out", on_gpu=True)
    assert gpu[gpu.index("--model_args") + 1] == "pretrained=/models/x"  # the model's own dtype
    assert "--device" not in gpu  # vLLM places the model itself


def test_problems_name_the_key_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = general_eval.problems(GeneralEval(include_path="no/such/tasks"))
    assert found == [
        f"stages.eval.general.include_path: no folder no/such/tasks (paths resolve from {tmp_path})"
    ]
    assert general_eval.problems(None) == []
    assert importlib.util.find_spec("lm_eval") is not None  # the dev extra installs it


def test_shipped_task_data_is_what_the_generator_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_general_mc", TASK_DIR / "make_general_mc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.items()
    assert len(rows) == 300 and len({r["id"] for r in rows}) == 300
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in rows)
    assert [r["id"].split("-")[0] for r in rows[:6]] == ["arith", "unit", "capital"] * 2  # interleaved
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert (TASK_DIR / "general_mc.jsonl").read_text(encoding="utf-8") == expected
    # spot checks by hand: the answer index points at the true value
    for r in rows:
        q, right = r["question"], r["choices"][r["answer"]]
        if q.startswith("What is ") and q[8].isdigit():
            a, op, b = q[8:-1].split()
            assert int(right) == {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op]
    japan = next(r for r in rows if r["question"] == "What is the capital of Japan?")
    assert japan["choices"][japan["answer"]] == "Tokyo"
