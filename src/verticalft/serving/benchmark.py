"""vLLM's own serving benchmark (`vllm.benchmarks.serve`) against a managed server, one concurrency
at a time, plus the pure logic that reads a sweep: SLO attainment and the operating point.

The benchmark runs in a child process (`BenchClient`) while this process watches the server: if
the server dies mid-run the stage fails at once with the server's log tail (`ServerError`)
instead of waiting for every request to time out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from verticalft.recipe import Slo  # the recipe's objectives, as `stages.bench.slo` gives them
from verticalft.serving.server import ManagedServer, ServerError

PERCENTILES = (50, 90, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
# what each repeat of a point keeps: its throughput, latency, SLO, and the totals the cost fit uses
REPEAT_KEYS = ("output_throughput", "duration", "num_prompts", "total_input_tokens", "total_output_tokens",
               "median_ttft_ms", "median_tpot_ms", "decode_tpot_ms", "meets_slo")  # fmt: skip
# A point shorter than `stages.bench.min_seconds` is re-run with more requests, at most this many
# times the configured count (a model so fast that this is not enough is flagged by its spread).
MAX_PROMPT_GROWTH = 16
PER_TOKEN = "per-token chunks"
POOLED = "pooled (e2e − TTFT) / (tokens − 1)"


def benchmark_argv(
    base_url: str,
    served_name: str,
    *,
    tokenizer: str,
    concurrency: int,
    num_prompts: int,
    input_len: int,
    output_len: int,
    slo: Slo,
    result_dir: Path,
    result_file: str,
    seed: int = 0,
    warmups: int | None = None,
) -> list[str]:
    """Command-line arguments of `vllm bench serve` for one point of the sweep (random prompts of
    `input_len` tokens, exactly `output_len` generated tokens, chat-free completions endpoint).
    `warmups` requests (default: the concurrency) go first and are not measured: the first
    requests after a start-up pay for lazy initialisation and cold caches."""
    return [
        "--backend", "openai",
        "--base-url", base_url,
        "--endpoint", "/v1/completions",
        "--model", tokenizer,
        "--served-model-name", served_name,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(input_len),
        "--random-output-len", str(output_len),
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf",
        "--seed", str(seed),
        "--percentile-metrics", ",".join(LATENCY_METRICS),
        "--metric-percentiles", ",".join(map(str, PERCENTILES)),
        "--save-result",
        "--save-detailed",  # per-request TTFT, ITL and lengths: what `decode_tpot` reads
        "--result-dir", str(result_dir),
        "--result-filename", result_file,
        "--disable-tqdm",
        "--ignore-eos",  # exactly output_len tokens per request, whatever the model or vLLM version
        "--num-warmups", str(concurrency if warmups is None else warmups),
        *slo.goodput_args(),
    ]  # fmt: skip


class BenchClient:
    """vLLM's benchmark client in one child process, reused for every point of a stage.

    Why a child: importing `vllm.benchmarks.serve` pulls in triton, whose nanobind bindings print
    screens of "nanobind: leaked …" lines when the importing interpreter exits. In the child those
    lines, and anything else vLLM prints, go to `log_path`. The import starts at once, so it
    overlaps the first server's start-up; the child dies with this process (procs.exit_with_parent).

        with BenchClient(run_dir / "client.log") as client:
            result = client.run_point(server, argv, log_path)
    """

    def __init__(self, log_path: Path):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_client_init,
            initargs=(os.getpid(), str(log_path)),
        )
        self._pool.submit(_import_client)

    def __enter__(self) -> BenchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run_point(
        self, server: ManagedServer, argv: list[str], log_path: Path | None = None, poll_seconds: float = 0.5
    ) -> dict[str, Any]:
        """Run one benchmark; raise ServerError (with the server's log tail) if the server dies.
        vLLM's printed result table goes to `log_path` (the numbers are in the returned dict)."""
        from concurrent.futures import wait

        future = self._pool.submit(_run_benchmark, argv, str(log_path) if log_path else None)
        while not wait([future], timeout=poll_seconds).done:
            server.check_alive("during the benchmark")
        error = future.exception()
        result: dict[str, Any] = {} if error else future.result()
        if error or result.get("failed"):
            # Requests failing is often the first sign of a server that is dying: give its exit a
            # moment to show, so the error names the server (and its log) rather than the requests.
            server.wait_exit(3.0)
        server.check_alive("during the benchmark")
        if error:
            raise error
        return result


def _client_init(parent: int, log_path: str) -> None:
    from verticalft.procs import exit_with_parent

    exit_with_parent(parent)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def _import_client() -> None:
    import vllm.benchmarks.serve  # noqa: F401


def _run_benchmark(argv: list[str], log_path: str | None) -> dict[str, Any]:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if log_path is not None:
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(log_path, "w"))))
        return main(args)


def summarise(result: dict[str, Any], slo: Slo) -> dict[str, Any]:
    """The figures the report and the cost stage use, from vLLM's result dict."""
    keys = ["completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
            "total_input_tokens", "total_output_tokens", "max_concurrency"]  # fmt: skip
    out = {k: result.get(k) for k in keys}
    out["input_throughput"] = (
        (result.get("total_input_tokens") or 0) / result["duration"] if result.get("duration") else None
    )
    for metric in LATENCY_METRICS:
        for stat in ("mean", "median", *(f"p{p}" for p in PERCENTILES)):
            out[f"{stat}_{metric}_ms"] = result.get(f"{stat}_{metric}_ms")
    out["decode_tpot_ms"], out["tpot_method"], out["per_token_requests"] = decode_tpot(result)
    goodput = result.get("request_goodput")
    out["request_goodput"] = goodput
    out["slo_attainment"] = slo_attainment(goodput, result.get("request_throughput"))
    out["meets_slo"] = meets_slo(out["slo_attainment"], slo)
    return out


def decode_tpot(result: dict[str, Any]) -> tuple[float | None, str | None, int]:
    """Time per output token after the first, in ms, as the client can actually see it, with how
    it was taken and how many requests streamed one token per chunk.

    Why not vLLM's `median_tpot_ms`: it is (e2e − TTFT) / (tokens − 1) per request, and when the
    server sends several tokens in one chunk (vLLM merges a request's outputs when the HTTP side
    lags behind the engine, as on a busy CPU) a request whose answer came in one chunk has TPOT ≈ 0;
    the median then reports a decode faster than memory bandwidth allows. So: the median over the
    requests that streamed one chunk per token (`len(itl) == tokens − 1`) when there are any, else
    the pooled Σ(e2e − TTFT) / Σ(tokens − 1) over every request, which counts each request's decode
    time once whatever its chunking (and is said to be so: `tpot_method`).
    """
    import statistics

    lens, ttfts = result.get("output_lens") or [], result.get("ttfts") or []
    itls, e2es = result.get("itls") or [], result.get("latencies") or []
    errors = result.get("errors") or [""] * len(lens)
    rows = [
        (n, ttft, len(itl), e2e)
        for n, ttft, itl, e2e, err in zip(lens, ttfts, itls, e2es, errors, strict=False)
        if not err and n and n > 1 and ttft is not None and e2e is not None
    ]
    if not rows:
        return None, None, 0
    per_token = [(e2e - ttft) / (n - 1) for n, ttft, chunks, e2e in rows if chunks == n - 1]
    if per_token:
        return round(statistics.median(per_token) * 1000, 6), PER_TOKEN, len(per_token)
    pooled = sum(e2e - ttft for _, ttft, _, e2e in rows) / sum(n - 1 for n, *_ in rows)
    return round(pooled * 1000, 6), POOLED, 0


def prompts_for(num_prompts: int, duration: float, min_seconds: float, configured: int) -> int:
    """How many requests a point needs to last `min_seconds`, from a run of `num_prompts` that
    took `duration` s (10% margin; never fewer than now, never more than MAX_PROMPT_GROWTH × the
    configured count). A 2-second point repeats badly: its spread is noise, not the server."""
    if duration >= min_seconds or duration <= 0:
        return num_prompts
    import math

    wanted = math.ceil(num_prompts * min_seconds / duration * 1.1)
    return max(num_prompts, min(wanted, configured * MAX_PROMPT_GROWTH))


def meets_slo(attainment: float | None, slo: Slo) -> bool | None:
    """True/False when the SLO was checked; None when it has objectives but the point has no
    goodput figure ("SLO not checked" — never counted as met); True when no objective is set."""
    if not slo.goodput_args():
        return True
    if attainment is None:
        return None
    return attainment >= slo.min_attainment


def slo_attainment(goodput: float | None, request_throughput: float | None) -> float | None:
    """Share of completed requests that met every objective (None without objectives)."""
    if goodput is None or not request_throughput:
        return None
    return round(min(1.0, goodput / request_throughput), 4)


def combine_repeats(repeats: list[dict[str, Any]], max_spread: float = 0.2) -> dict[str, Any]:
    """One sweep point from its repeated measurements: the figures of the slower repeat by output
    throughput (the lower median: prices are not quoted from the lucky run), the SLO met only if
    every repeat met it (unchecked if any was unchecked), and the spreads — (max − min) / min of
    output throughput and of the decode TPOT (`decode_tpot`) — with `unstable` set when either exceeds `max_spread`."""
    if not repeats:
        raise ValueError("no repeats to combine")
    ranked = sorted(repeats, key=lambda p: p.get("output_throughput") or 0.0)
    point = dict(ranked[(len(ranked) - 1) // 2])
    flags = [p.get("meets_slo") for p in repeats]
    point["meets_slo"] = False if False in flags else (None if None in flags else True)
    point["repeats"] = [{k: p.get(k) for k in REPEAT_KEYS} for p in repeats]
    point["spread"] = relative_spread([p.get("output_throughput") for p in repeats])
    point["tpot_spread"] = relative_spread([p.get("decode_tpot_ms") for p in repeats])
    point["unstable"] = len(repeats) > 1 and any(
        x is not None and x > max_spread for x in (point["spread"], point["tpot_spread"])
    )
    return point


def relative_spread(values: list[float | None]) -> float | None:
    """(max − min) / min; None when a value is missing or the smallest is not positive."""
    known = [v for v in values if v is not None]
    if len(known) < len(values) or min(known) <= 0:
        return None
    return round((max(known) - min(known)) / min(known), 4)


def operating_point(sweep: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The point to quote prices at: the highest concurrency that meets the SLO with no failed
    requests; None if no point does (the caller then says so rather than quoting a fiction). A
    point whose SLO was not checked (`meets_slo` None) never qualifies."""
    ok = [
        p for p in sweep if p.get("meets_slo") is True and not p.get("failed") and p.get("output_throughput")
    ]
    return max(ok, key=lambda p: p["max_concurrency"] or 0) if ok else None


def assert_no_failures(point: dict[str, Any], name: str, server: ManagedServer) -> None:
    """Failed requests with a live server are a benchmark problem worth stopping on."""
    if point.get("failed"):
        raise ServerError(
            f"{name}: {point['failed']} of {point['failed'] + (point['completed'] or 0)} benchmark requests failed "
            f"at concurrency {point['max_concurrency']}; server log: {server.log_path}"
        )
