"""Hub model ids against a local stand-in for the Hub: a tiny HTTP server on
127.0.0.1 answering as huggingface.co does (404 + `X-Error-Code: RepoNotFound` for an unknown
repository, the file with `X-Repo-Commit`/`ETag` for a known one), reached through `HF_ENDPOINT`.
huggingface_hub reads the endpoint when it is imported, so `verticalft` runs in a subprocess with
the variable set, as a user's shell would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from verticalft.models import train_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test runs `verticalft` processes: ~23 CPU-seconds each
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GEMMA_ID, BASE_ID, MISSING_ID = "acme/gemma-shaped-2b", "acme/base-no-template", "acme/gemma-shpaed-2b"
# google/gemma-2b's config.json (the keys that size it); it leaves tie_word_embeddings out (GemmaConfig ties)
GEMMA_2B = {
    "model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18, "intermediate_size": 16384,
    "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000,
}  # fmt: skip


def repo_files(tmp: Path) -> dict[str, dict[str, bytes]]:
    """Two repositories: a gemma-shaped model whose tokenizer has the tiny ChatML-like marked
    template, and a base model whose tokenizer has no chat template at all."""
    out = {}
    for repo, template in ((GEMMA_ID, True), (BASE_ID, False)):
        tok = train_tiny_tokenizer(["Revenue rose in the quarter."] * 20, 300)
        if not template:
            tok.chat_template = None
        folder = tmp / repo.replace("/", "--")
        tok.save_pretrained(folder)
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        files["config.json"] = json.dumps(GEMMA_2B).encode()
        out[repo] = files
    return out


class FakeHub(BaseHTTPRequestHandler):
    repos: dict[str, dict[str, bytes]] = {}
    seen: list[str] = []

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _answer(self, body: bool) -> None:
        self.seen.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "models"]:  # model_info / tree listings
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._error(404, "RepoNotFound")
            payload = json.dumps([] if "tree" in parts else {"id": repo, "sha": COMMIT}).encode()
            return self._send(200, payload, {"Content-Type": "application/json"}, body)
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        if repo not in self.repos:
            return self._error(404, "RepoNotFound")
        data = self.repos[repo].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound")
        etag = hashlib.sha1(data).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        self._send(200, data, headers, body)

    def _error(self, status: int, code: str) -> None:
        self._send(status, b"{}", {"X-Error-Code": code, "X-Error-Message": code}, self.command != "HEAD")

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self._answer(False)

    def do_GET(self):  # noqa: N802
        self._answer(True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    FakeHub.repos = repo_files(tmp)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def verticalft(
    args: list[str], endpoint: str, home: Path, offline: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HOME": str(home), "HF_ENDPOINT": endpoint}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def gemma_params() -> int:
    """google/gemma-2b by hand: attention 2048·(8·256)·2 + 2048·(1·256)·2, MLP 3·2048·16384, two
    norms, 18 blocks; one tied 256000 × 2048 embedding; the final norm. Published: 2.51B."""
    block = 2048 * 8 * 256 * 2 + 2048 * 1 * 256 * 2 + 3 * 2048 * 16384 + 2 * 2048
    return 18 * block + 256000 * 2048 + 2048


def test_plan_sizes_a_hub_model_outside_the_old_list_online_then_from_the_cache(hub, tmp_path):
    assert gemma_params() == 2_506_172_416 and abs(gemma_params() - 2.51e9) < 0.01e9
    sft_only = ["-s", f"models.teacher={GEMMA_ID}", "-s", "stages.cpt=null", "-s", "stages.distill=null"]
    online = verticalft(["plan", "recipes/finance.yaml", *sft_only], hub, tmp_path)
    assert online.returncode == 0, online.stderr
    assert "2.51B" in online.stdout and "$0.00" not in online.stdout.split("total:")[1].splitlines()[0]
    assert any(line.endswith(f"/{GEMMA_ID}/resolve/main/config.json") for line in FakeHub.seen)
    # offline now: the config.json downloaded above is in the HF cache
    offline = verticalft(["plan", "recipes/finance.yaml", *sft_only], "http://127.0.0.1:9", tmp_path, True)
    assert offline.returncode == 0 and "2.51B" in offline.stdout, offline.stdout + offline.stderr


def test_a_hub_id_that_does_not_exist_is_a_problem_when_the_hub_answers(hub, tmp_path):
    args = ["validate", "recipes/finance.yaml", "-s", f"models.teacher={GEMMA_ID}", "-s", "stages.distill=null",
            "-s", f"models.students=[{MISSING_ID}]"]  # fmt: skip
    answered = verticalft(args, hub, tmp_path)
    assert answered.returncode == 2, answered.stdout + answered.stderr
    assert f"models.students[0]: {MISSING_ID}: the Hub has no such model" in answered.stderr
    assert "Traceback" not in answered.stderr and "models.teacher" not in answered.stderr  # it exists
    # offline (nothing cached for it): unknown, a note, not a problem
    offline = verticalft(args, "http://127.0.0.1:9", tmp_path / "empty", True)
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert f"note: models.students[0]: could not check {MISSING_ID}" in " ".join(offline.stdout.split())


def test_validate_checks_a_hub_models_chat_template(hub, tmp_path):
    # a base model without a chat template cannot train sft's assistant turns: said now, exit 2
    args = ["validate", "recipes/finance.yaml", "-s", "models.chat_template=model", "-s", "stages.distill=null",
            "-s", f"models.students=[{GEMMA_ID}]"]  # fmt: skip
    bad = verticalft([*args, "-s", f"models.teacher={BASE_ID}"], hub, tmp_path)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert f"models.chat_template: {BASE_ID} has no chat template" in " ".join(bad.stderr.split())
    good = verticalft([*args, "-s", f"models.teacher={GEMMA_ID}"], hub, tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
