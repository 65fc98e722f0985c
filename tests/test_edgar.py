"""The EDGAR connector against a local stand-in for sec.gov: real HTTP on 127.0.0.1, saved fixtures.

The fixtures in tests/data/edgar are hand-written: a ticker table, the submissions file of a made-up
company (Northwind Instruments, CIK 7654321) and its 10-K primary document in inline-XBRL style.
"""

import gzip
import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/data/edgar"
UA = "Verticalft Tests tests@example.com"
TEN_K = "/Archives/edgar/data/7654321/000765432124000012/nwin-20231231.htm"
Q3_10Q = "/Archives/edgar/data/7654321/000765432123000041/nwin-20230930.htm"
Q2_10Q = "/Archives/edgar/data/7654321/000765432123000029/nwin-20230630.htm"
SENTENCE = "Net revenue increased 12% to $1,482.6 million in fiscal 2023"


def _load_edgar():
    spec = importlib.util.spec_from_file_location("finance_edgar", ROOT / "data_pipelines/finance/edgar.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


edgar = _load_edgar()


class FakeEdgar:
    """EDGAR's URL paths mapped to fixture files; records every request and can fail some first."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, User-Agent)
        self.failures: dict[str, list[int]] = {}  # path -> statuses to answer before the file
        self.base = ""
        self.routes = {
            "/files/company_tickers.json": FIXTURES / "company_tickers.json",
            "/submissions/CIK0007654321.json": FIXTURES / "CIK0007654321.json",
        }
        recent = json.loads(self.routes["/submissions/CIK0007654321.json"].read_text())["filings"]["recent"]
        for accession, document in zip(recent["accessionNumber"], recent["primaryDocument"], strict=True):
            path = f"/Archives/edgar/data/7654321/{accession.replace('-', '')}/{document}"
            self.routes[path] = FIXTURES / "nwin-20231231.htm"  # one hand-written document serves them all

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def documents(self) -> list[str]:
        return [p for p in self.paths() if p.startswith("/Archives/")]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        fake: FakeEdgar = self.server.fake
        fake.requests.append((self.path, self.headers.get("User-Agent")))
        if fake.failures.get(self.path):
            status = fake.failures[self.path].pop(0)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = fake.routes.get(self.path)
        if file is None:
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        if file.suffix == ".htm" and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)  # as www.sec.gov does
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", "application/json" if file.suffix == ".json" else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_edgar():
    fake = FakeEdgar()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(fake: FakeEdgar, clock: FakeClock | None = None, **kwargs):
    clock = clock or FakeClock()
    kwargs.setdefault("sleep", clock.sleep)
    limiter = edgar.RateLimiter(10, clock=clock.time, sleep=clock.sleep)
    return edgar.EdgarClient(UA, www_base=fake.base, data_base=fake.base, rate_limiter=limiter, **kwargs)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collects_requested_forms_politely(fake_edgar, tmp_path):
    clock = FakeClock()
    out = tmp_path / "edgar.jsonl"
    summary = edgar.collect(
        make_client(fake_edgar, clock), ["NWIN"], out, ["10-K", "10-Q"], 2, progress=False
    )

    assert (summary.written, summary.skipped, summary.errors) == (2, 0, [])
    # The newest 10-K and 10-Q only: not the 8-K or Form 4 between them, not the older ones (limit 2).
    assert fake_edgar.paths() == [
        "/files/company_tickers.json",
        "/submissions/CIK0007654321.json",
        TEN_K,
        Q3_10Q,
    ]
    assert {agent for _, agent in fake_edgar.requests} == {UA}
    # Every request went through the limiter: spaced 0.1 s apart (10/s) on the fake clock, no real sleep.
    assert clock.sleeps == pytest.approx([0.1] * 3)

    ten_k, ten_q = read_jsonl(out)
    assert {k: v for k, v in ten_k.items() if k != "text"} == {
        "id": "edgar:7654321:0007654321-24-000012",
        "source": "sec-edgar",
        "date": "2024-02-23",
        "license": "sec-edgar-public",
        "company": "Northwind Instruments, Inc.",
        "ticker": "NWIN",
        "form": "10-K",
        "url": fake_edgar.base + TEN_K,
    }
    assert (ten_q["form"], ten_q["date"]) == ("10-Q", "2023-11-03")
    text = ten_k["text"]
    assert SENTENCE in text
    assert "| Cost of revenue | 701.4 | 640.2 |" in text  # a table row, figures kept out of <ix:nonFraction>
    assert "iso4217" not in text and "0007654321" not in text  # the hidden XBRL header is dropped


def test_ticker_to_cik_and_zero_padding(fake_edgar):
    client = make_client(fake_edgar, license="custom-licence")
    assert client.company("nwin") == (7654321, "Northwind Instruments, Inc.")
    assert client.company("AAPL") == (320193, "Apple Inc.")
    assert client.submissions_url(320193) == f"{fake_edgar.base}/submissions/CIK0000320193.json"
    assert fake_edgar.paths() == ["/files/company_tickers.json"]  # the ticker table is fetched once
    filing = client.filings("NWIN", ["10-K"], limit=1)[0]
    assert client.document_url(filing) == fake_edgar.base + TEN_K
    assert client.record(filing)["license"] == "custom-licence"
    with pytest.raises(
        edgar.EdgarError, match=r"unknown ticker 'ZZZZ' \(not listed in http://127\.0\.0\.1:\d+/files"
    ):
        client.company("ZZZZ")


def test_rate_limiter_spaces_calls_on_a_fake_clock():
    clock = FakeClock()
    limiter = edgar.RateLimiter(10, clock=clock.time, sleep=clock.sleep)
    for _ in range(3):
        limiter.wait()
    assert clock.sleeps == pytest.approx([0.1, 0.1])
    clock.now += 5.0  # idle: the next call goes straight through
    limiter.wait()
    clock.now += 0.04
    limiter.wait()
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.06])


def test_missing_user_agent_is_refused_with_how_to(fake_edgar, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SEC_EDGAR_USER_AGENT", raising=False)
    for agent in (None, "", "python-urllib"):
        with pytest.raises(edgar.EdgarError, match="--user-agent or set SEC_EDGAR_USER_AGENT"):
            edgar.EdgarClient(agent)
    argv = ["--tickers", "NWIN", "--out", str(tmp_path / "o.jsonl"), "--www-base", fake_edgar.base]
    assert edgar.main([*argv, "--data-base", fake_edgar.base]) == 2
    err = capsys.readouterr().err.strip()
    assert "SEC_EDGAR_USER_AGENT" in err and "\n" not in err
    assert fake_edgar.requests == []

    monkeypatch.setenv("SEC_EDGAR_USER_AGENT", UA)
    assert edgar.EdgarClient().user_agent == UA


@pytest.mark.parametrize(("status", "waited"), [(503, 0.5), (429, 2.0)])  # 429 honours Retry-After
def test_retries_429_and_5xx(fake_edgar, status, waited):
    waits: list[float] = []
    client = make_client(fake_edgar, backoff=0.5, sleep=waits.append)
    fake_edgar.failures[TEN_K] = [status]
    filing = client.filings("NWIN", ["10-K"], limit=1)[0]
    assert SENTENCE in client.record(filing)["text"]
    assert fake_edgar.documents() == [TEN_K, TEN_K]
    assert waits == [waited]


def test_gives_up_after_bounded_retries_and_does_not_retry_404(fake_edgar):
    waits: list[float] = []
    client = make_client(fake_edgar, retries=2, backoff=0.5, sleep=waits.append)
    fake_edgar.failures[TEN_K] = [500] * 10
    with pytest.raises(edgar.EdgarError, match=rf"^HTTP 500 for {fake_edgar.base}{TEN_K} after 3 attempts$"):
        client.get(fake_edgar.base + TEN_K)
    assert waits == [0.5, 1.0]  # exponential backoff
    with pytest.raises(edgar.EdgarError, match="^HTTP 404 for .*/nope.htm$"):
        client.get(fake_edgar.base + "/nope.htm")
    assert fake_edgar.paths() == [TEN_K] * 3 + ["/nope.htm"]


def test_rerun_resumes_without_refetching(fake_edgar, tmp_path):
    out = tmp_path / "edgar.jsonl"
    assert (
        edgar.collect(make_client(fake_edgar), ["NWIN"], out, ["10-K", "10-Q"], 2, progress=False).written
        == 2
    )
    fake_edgar.requests.clear()

    summary = edgar.collect(make_client(fake_edgar), ["NWIN"], out, ["10-K", "10-Q"], 3, progress=False)
    assert (summary.written, summary.skipped) == (1, 2)
    assert fake_edgar.documents() == [Q2_10Q]  # only the filing not yet in the file
    fake_edgar.requests.clear()

    assert (
        edgar.collect(make_client(fake_edgar), ["NWIN"], out, ["10-K", "10-Q"], 3, progress=False).written
        == 0
    )
    assert fake_edgar.documents() == []
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["edgar.jsonl"]  # no temp file left behind


def test_interrupted_run_keeps_whole_records(fake_edgar, tmp_path):
    out = tmp_path / "edgar.jsonl"
    client = make_client(fake_edgar)
    real_record, calls = client.record, []

    def record_then_interrupt(filing):
        calls.append(filing)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_record(filing)

    client.record = record_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        edgar.collect(client, ["NWIN"], out, ["10-K", "10-Q"], 3, progress=False)
    assert [r["form"] for r in read_jsonl(out)] == ["10-K"]  # flushed on the way out, one whole line

    fake_edgar.requests.clear()
    assert (
        edgar.collect(make_client(fake_edgar), ["NWIN"], out, ["10-K", "10-Q"], 3, progress=False).written
        == 2
    )
    assert fake_edgar.documents() == [Q3_10Q, Q2_10Q]


def test_bad_tickers_are_reported_and_the_others_still_written(fake_edgar, tmp_path, capsys):
    out = tmp_path / "edgar.jsonl"
    argv = ["--tickers", "ZZZZ", "AAPL", "NWIN", "nwin", "--forms", "10-K", "--limit", "1", "--out", str(out)]
    argv += [
        "--user-agent",
        UA,
        "--www-base",
        fake_edgar.base,
        "--data-base",
        fake_edgar.base,
        "--no-progress",
    ]
    assert edgar.main(argv) == 1

    err = capsys.readouterr().err.splitlines()
    assert any("skipping ZZZZ: unknown ticker 'ZZZZ'" in line for line in err)
    # AAPL is a known ticker but the stand-in server has no submissions for it: the line names the URL.
    assert f"edgar: skipping AAPL: HTTP 404 for {fake_edgar.base}/submissions/CIK0000320193.json" in err
    assert [r["id"] for r in read_jsonl(out)] == ["edgar:7654321:0007654321-24-000012"]  # once, not twice
    assert {agent for _, agent in fake_edgar.requests} == {UA}


def test_tag_strip_fallback_keeps_text_and_figures(monkeypatch):
    html = (FIXTURES / "nwin-20231231.htm").read_text()
    monkeypatch.setattr(edgar.trafilatura, "extract", lambda *args, **kwargs: None)
    text = edgar.html_to_text(html)
    assert SENTENCE in text
    assert "Cost of revenue 701.4 640.2" in text
    assert "iso4217" not in text and "nwin-20231231" not in text  # hidden header and <head> skipped
