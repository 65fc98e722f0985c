"""Sequence-level distillation's teacher side: an OpenAI-compatible endpoint as the teacher, and the
filtering of its answers. The endpoint here is a local stand-in for a hosted API (no internet);
the client code is the one the stage runs."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from verticalft.distill.generate import generate_openai
from verticalft.distill.students import student_name
from verticalft.distill.teacher import generated_set
from verticalft.serving.offline import pick_backend


class _Endpoint(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Endpoint.seen.append((self.path, self.headers.get("Authorization"), body))
        prompt = body["messages"][-1]["content"]
        if prompt == "too long":  # a request the API refuses: retrying cannot help
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "maximum context length exceeded"}')
            return
        text, reason = {"cut": ("The answer is", "length"), "empty": ("", "stop")}.get(
            prompt, (prompt.upper(), "stop")
        )
        payload = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": reason}]}
        if prompt == "bare":  # a server that leaves out what it may: null content, no finish_reason
            payload = {"choices": [{"message": {"role": "assistant", "content": None}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Endpoint.seen = []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_endpoint_teacher_sends_the_key_from_the_environment(endpoint, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-test-123")
    prompts = ["payroll?", "cut", "empty", "payroll?"]
    chats = [[{"role": "user", "content": p}] for p in prompts]
    gens = generate_openai(
        endpoint,
        "teacher-32b",
        chats,
        max_new_tokens=32,
        temperature=0.0,
        api_key_env="TEACHER_KEY",
        concurrency=2,
    )
    assert [g.finish_reason for g in gens] == ["stop", "length", "stop", "stop"]
    assert gens[0].text == "PAYROLL?"
    path, auth, body = _Endpoint.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test-123"
    assert body["model"] == "teacher-32b" and body["max_tokens"] == 32
    # the kept set: the cut answer, the empty one and the repeated prompt are dropped
    kept, dropped = generated_set(chats, gens)
    assert dropped == {"duplicate_prompt": 1, "truncated_response": 1, "empty_response": 1}
    assert kept == [
        {"messages": [{"role": "user", "content": "payroll?"}, {"role": "assistant", "content": "PAYROLL?"}]}
    ]
    assert "sk-test" not in json.dumps(kept)


def test_missing_key_is_a_clear_error(endpoint, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY is not set"):
        generate_openai(
            endpoint,
            "m",
            [[{"role": "user", "content": "x"}]],
            max_new_tokens=8,
            temperature=0.0,
            api_key_env="NO_SUCH_KEY",
        )


def test_backend_choice(monkeypatch):
    import importlib.util

    assert pick_backend("auto", "http://127.0.0.1:8000/v1") == "openai"
    assert pick_backend("hf", None) == "hf"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name))
    assert pick_backend("auto") == "hf"  # no vLLM installed: transformers
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert pick_backend("auto") == "vllm"  # this environment has vLLM


def test_student_folder_names():
    assert student_name("tiny://student-s") == "student-s"
    assert student_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen2.5-7B-Instruct"
    assert student_name("/models/my-student/") == "my-student"


def test_endpoint_request_body_and_an_answer_missing_its_optional_fields(endpoint):
    chats = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "bare"}]]
    kwargs = {"enable_thinking": False}
    gens = generate_openai(
        endpoint + "/", "m", chats, max_new_tokens=16, temperature=0.7, chat_template_kwargs=kwargs
    )
    assert [(g.text, g.finish_reason) for g in gens] == [("", "stop")]
    path, auth, body = _Endpoint.seen[0]
    assert path == "/v1/chat/completions" and auth is None  # no api_key_env: no Authorization header
    assert body == {
        "model": "m",
        "messages": chats[0],  # the whole chat, system turn included
        "max_tokens": 16,
        "temperature": 0.7,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    generate_openai(endpoint, "m", chats, max_new_tokens=16, temperature=0.7)
    assert "chat_template_kwargs" not in _Endpoint.seen[1][2]  # a hosted API may refuse the field


def test_an_unreachable_endpoint_backs_off_then_reports_every_prompt(tmp_path, monkeypatch):
    import socket

    from verticalft.distill import generate as g

    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits = []
    monkeypatch.setattr(g.time, "sleep", waits.append)
    journal = tmp_path / "answers.jsonl"
    chats = [[{"role": "user", "content": "x"}]]
    with pytest.raises(
        g.EndpointError, match=r"1 of 1 prompts got no answer after 2 retries \(first: http://127"
    ):
        generate_openai(
            f"http://127.0.0.1:{port}/v1",
            "m",
            chats,
            max_new_tokens=8,
            temperature=0.0,
            retries=2,
            backoff_s=40.0,
            journal=journal,
        )
    assert waits == [40.0, 60.0]  # 40 · 2^0, then 40 · 2^1 = 80 capped at 60; none after the last try
    assert not journal.exists()  # nothing answered, nothing saved


class _Flaky(BaseHTTPRequestHandler):
    """A hosted API on a bad day: a 429 (with Retry-After) then a 503 before each prompt's answer,
    and one prompt that fails until the endpoint recovers."""

    calls: dict = {}
    down: set = set()

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        n = _Flaky.calls[prompt] = _Flaky.calls.get(prompt, 0) + 1
        if n == 1:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        if n == 2 or prompt in _Flaky.down:
            self.send_response(503)
            self.end_headers()
            return
        data = json.dumps(
            {"choices": [{"message": {"content": prompt.upper()}, "finish_reason": "stop"}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_teacher_retries_saves_each_answer_and_reruns_only_the_missing(tmp_path):
    from verticalft.distill.generate import EndpointError

    server = HTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    _Flaky.calls, _Flaky.down = {}, {"c"}
    journal = tmp_path / "teacher_answers.jsonl"
    prompts = [[{"role": "user", "content": p}] for p in "abcd"]
    try:
        with pytest.raises(EndpointError, match="1 of 4 prompts got no answer") as err:
            generate_openai(
                url,
                "m",
                prompts,
                max_new_tokens=8,
                temperature=0.0,
                concurrency=2,
                journal=journal,
                retries=3,
                backoff_s=0.01,
            )
        assert "3 answers received are saved" in str(err.value)
        assert _Flaky.calls == {"a": 3, "b": 3, "c": 4, "d": 3}  # 429, 503, then the answer
        assert len(journal.read_text().splitlines()) == 3
        _Flaky.down = set()  # recovered: the rerun asks for "c" only
        gens = generate_openai(
            url,
            "m",
            prompts,
            max_new_tokens=8,
            temperature=0.0,
            concurrency=2,
            journal=journal,
            retries=3,
            backoff_s=0.01,
        )
        assert [g.text for g in gens] == ["A", "B", "C", "D"]
        assert _Flaky.calls == {"a": 3, "b": 3, "c": 5, "d": 3}
    finally:
        server.shutdown()


def test_a_request_the_api_refuses_is_not_retried(endpoint, tmp_path):
    from verticalft.distill.generate import EndpointError

    with pytest.raises(EndpointError, match="HTTP 400 .*maximum context length"):
        generate_openai(
            endpoint,
            "m",
            [[{"role": "user", "content": "too long"}]],
            max_new_tokens=8,
            temperature=0.0,
            retries=5,
            backoff_s=10,
        )
    assert len(_Endpoint.seen) == 1


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_sequence_teacher_is_scored_then_freed_before_a_vllm_child(backend, tmp_path, monkeypatch):
    """Rank 0 loads the HF teacher to score it; when vLLM writes the answers (a child process that
    sizes itself from free GPU memory) that teacher is gone before generation starts. With `hf`
    generation it is the generator, so it stays."""
    import gc
    import weakref
    from pathlib import Path

    from verticalft.distill import teacher as teacher_side
    from verticalft.models import build_tiny_models, load_tokenizer
    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir
    from verticalft.stages import distill
    from verticalft.stages.base import StageContext

    root = Path(__file__).resolve().parents[1]
    texts = [
        json.loads(line)["text"] for line in (root / "data_pipelines/finance/sample/corpus.jsonl").open()
    ]
    spec = {"teacher": {"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128}}
    folder = build_tiny_models(tmp_path / "tiny", texts[:200], spec, vocab_size=512, seed=0)["teacher"]
    r = load_recipe(
        root / "recipes/finance.yaml",
        "tiny",
        [f"models.teacher={folder}", "stages.distill.kind=sequence", "evaluation.max_items=2",
         f"stages.distill.generation.backend={backend}"],
    )  # fmt: skip
    ctx = StageContext(r, RunDir(tmp_path / "run"), "distill")
    refs = []

    def load_and_watch(c, p):  # the real loader; a weak reference tells when the model is gone
        model = teacher_side.load_teacher(c, p)
        refs.append(weakref.ref(model))
        return model

    seen = []

    def generation(ctx, teacher, tokenizer, prompts):  # stands in for the vLLM child (GPU work)
        gc.collect()
        seen.append((teacher is not None, refs[0]() is not None))
        return [], {}

    monkeypatch.setattr(distill, "load_teacher", load_and_watch)
    monkeypatch.setattr(distill, "sequence_rows", generation)
    tokenizer = load_tokenizer(folder, None, require_mask=True)
    metrics: dict = {}
    distill._teacher_side(
        ctx,
        folder,
        tokenizer=tokenizer,
        convs=[],
        contexts=[[{"role": "user", "content": "What was revenue?"}]],
        todo=["student-s"],
        metrics=metrics,
    )
    assert metrics["teacher_eval"] is not None and len(refs) == 1  # loaded once, scored
    # (passed to generation, still in memory)
    assert seen == [(False, False) if backend == "vllm" else (True, True)]
