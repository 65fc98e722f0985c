"""Fetch SEC EDGAR filings (10-K, 10-Q, ...) for a list of tickers into a JSONL corpus.

    export SEC_EDGAR_USER_AGENT="Example Corp admin@example.com"
    python data_pipelines/finance/edgar.py --tickers AAPL MSFT --forms 10-K 10-Q --limit 5 \\
        --out data_pipelines/finance/data/edgar.jsonl

Why it is built this way:
- EDGAR's fair-access rules (https://www.sec.gov/os/accessing-edgar-data): every request must say who is
  asking, as a User-Agent "Company Name admin@example.com" (EDGAR answers 403 without one), and a client
  may make at most 10 requests per second. So the client refuses to start without a user agent, spaces
  its requests through a RateLimiter, and backs off (bounded) on 429 and 5xx instead of hammering.
- Filings are inline-XBRL HTML: the figures in their tables sit inside <ix:nonFraction> tags, which
  trafilatura would drop along with the hidden <ix:header> block. The ix tags are unwrapped first and
  tables are kept, so the corpus keeps the numbers.
- Long runs get interrupted. The output file is rewritten atomically (temp file + rename) every few
  filings, so it only ever holds whole records, and a rerun skips filings already in it without
  downloading their documents again.

Only the standard library talks to EDGAR (urllib). Base URLs are constructor arguments, so the tests
point the real client at a local server.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import trafilatura
from tqdm import tqdm

WWW_BASE = "https://www.sec.gov"
DATA_BASE = "https://data.sec.gov"
USER_AGENT_ENV = "SEC_EDGAR_USER_AGENT"
SOURCE = "sec-edgar"
DEFAULT_LICENSE = "sec-edgar-public"
MAX_RETRY_DELAY = 60.0


class EdgarError(RuntimeError):
    """A failure worth one line to the user: bad user agent, unknown ticker, HTTP error after retries."""


def check_user_agent(user_agent: str | None) -> str:
    """The declared User-Agent, or EdgarError saying how to set one (EDGAR answers 403 without it)."""
    user_agent = (user_agent or "").strip()
    if not re.search(r"\S+@\S+\.\S+", user_agent):
        raise EdgarError(
            f"EDGAR requires a User-Agent naming you and an email, e.g. 'Example Corp admin@example.com'; "
            f"pass --user-agent or set {USER_AGENT_ENV} (got {user_agent!r})"
        )
    return user_agent


class RateLimiter:
    """At most `per_second` calls of wait() per second: calls are spaced at least 1/per_second apart."""

    def __init__(
        self,
        per_second: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")

    def wait(self) -> None:
        delay = self._next - self._clock()
        if delay > 0:
            self._sleep(delay)
        self._next = max(self._clock(), self._next) + self.interval


@dataclass(frozen=True)
class Filing:
    cik: int
    ticker: str
    company: str
    form: str
    accession: str  # "0000320193-23-000106"
    filing_date: str  # ISO "2023-11-03"
    report_date: str
    primary_document: str

    @property
    def id(self) -> str:
        return f"edgar:{self.cik}:{self.accession}"


def ticker_key(ticker: str) -> str:
    return ticker.strip().upper().replace(".", "-")  # EDGAR spells BRK.B as BRK-B


class EdgarClient:
    """A polite EDGAR client: declared User-Agent, rate-limited, bounded retries on 429/5xx."""

    def __init__(
        self,
        user_agent: str | None = None,
        *,
        license: str = DEFAULT_LICENSE,
        www_base: str = WWW_BASE,
        data_base: str = DATA_BASE,
        rate_limiter: RateLimiter | None = None,
        retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.user_agent = check_user_agent(
            user_agent if user_agent is not None else os.environ.get(USER_AGENT_ENV)
        )
        self.license = license
        self.www_base, self.data_base = www_base.rstrip("/"), data_base.rstrip("/")
        self.rate_limiter = rate_limiter or RateLimiter()
        self.retries, self.backoff, self.timeout, self._sleep = retries, backoff, timeout, sleep
        self._tickers: dict[str, tuple[int, str]] | None = None

    def get(self, url: str) -> bytes:
        """GET `url`; retries 429, 5xx and connection errors with exponential backoff, then EdgarError."""
        request = urllib.request.Request(
            url, headers={"User-Agent": self.user_agent, "Accept-Encoding": "gzip"}
        )
        attempts = self.retries + 1
        for attempt in range(attempts):
            self.rate_limiter.wait()
            delay = self.backoff * 2**attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
                    return (
                        gzip.decompress(body) if response.headers.get("Content-Encoding") == "gzip" else body
                    )
            except urllib.error.HTTPError as e:
                e.close()
                if e.code == 403:
                    raise EdgarError(
                        f"HTTP 403 for {url} (EDGAR refuses undeclared User-Agents and >10 requests/s)"
                    ) from None
                if (e.code != 429 and e.code < 500) or attempt == attempts - 1:
                    tries = f" after {attempts} attempts" if attempt else ""
                    raise EdgarError(f"HTTP {e.code} for {url}{tries}") from None
                retry_after = (e.headers.get("Retry-After") or "").strip()
                delay = float(retry_after) if retry_after.isdigit() else delay
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == attempts - 1:
                    reason = getattr(e, "reason", e)
                    raise EdgarError(f"{url}: {reason} after {attempts} attempts") from None
            self._sleep(min(delay, MAX_RETRY_DELAY))
        raise AssertionError("unreachable")

    def get_json(self, url: str) -> Any:
        try:
            return json.loads(self.get(url))
        except ValueError:
            raise EdgarError(f"{url} did not return JSON") from None

    @property
    def tickers_url(self) -> str:
        return f"{self.www_base}/files/company_tickers.json"

    def tickers(self) -> dict[str, tuple[int, str]]:
        """Ticker -> (CIK, company title), fetched once."""
        if self._tickers is None:
            rows = self.get_json(self.tickers_url).values()
            self._tickers = {row["ticker"].upper(): (int(row["cik_str"]), row["title"]) for row in rows}
        return self._tickers

    def company(self, ticker: str) -> tuple[int, str]:
        """(CIK, company title) of a ticker, or EdgarError naming it."""
        found = self.tickers().get(ticker_key(ticker))
        if found is None:
            raise EdgarError(f"unknown ticker {ticker!r} (not listed in {self.tickers_url})")
        return found

    def submissions_url(self, cik: int) -> str:
        return f"{self.data_base}/submissions/CIK{cik:010d}.json"

    def filings(self, ticker: str, forms: Iterable[str] = (), limit: int | None = None) -> list[Filing]:
        """The most recent `limit` filings of the given forms (all forms if empty), newest first.

        Reads only the "recent" block of the submissions file (the last ~1000 filings or at least a year).
        """
        cik, title = self.company(ticker)
        submissions = self.get_json(self.submissions_url(cik))
        try:
            recent = submissions["filings"]["recent"]
            columns = [
                recent[k] for k in ("form", "accessionNumber", "filingDate", "reportDate", "primaryDocument")
            ]
        except (KeyError, TypeError) as e:
            raise EdgarError(f"{self.submissions_url(cik)}: not a submissions file (missing {e})") from None
        wanted = {f.upper() for f in forms}
        found: list[Filing] = []
        for form, accession, filing_date, report_date, document in zip(*columns, strict=False):
            if wanted and form.upper() not in wanted:
                continue
            if limit is not None and len(found) >= limit:
                break
            found.append(
                Filing(
                    cik=cik,
                    ticker=ticker_key(ticker),
                    company=submissions.get("name") or title,
                    form=form,
                    accession=accession,
                    filing_date=filing_date,
                    report_date=report_date,
                    primary_document=document,
                )
            )
        return found

    def document_url(self, filing: Filing) -> str:
        folder = filing.accession.replace("-", "")
        return f"{self.www_base}/Archives/edgar/data/{filing.cik}/{folder}/{filing.primary_document}"

    def document(self, filing: Filing) -> str:
        """The primary document, decoded (EDGAR documents are UTF-8, ASCII or Windows-1252)."""
        body = self.get(self.document_url(filing))
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body.decode("cp1252", errors="replace")

    def record(self, filing: Filing) -> dict[str, str]:
        """Fetch and extract one filing as a corpus record."""
        raw = self.document(filing)
        text = raw.strip() if filing.primary_document.lower().endswith(".txt") else html_to_text(raw)
        if not text:
            raise EdgarError(f"no text extracted from {self.document_url(filing)}")
        return {
            "id": filing.id,
            "text": text,
            "source": SOURCE,
            "date": filing.filing_date,
            "license": self.license,
            "company": filing.company,
            "ticker": filing.ticker,
            "form": filing.form,
            "url": self.document_url(filing),
        }


_IX_HEADER = re.compile(r"<ix:header\b.*?</ix:header\s*>", re.S | re.I)
_IX_TAG = re.compile(r"</?ix:[^>]*>", re.I)


def html_to_text(markup: str) -> str:
    """Filing HTML -> text, tables kept; a plain tag-strip when trafilatura finds nothing."""
    markup = _IX_TAG.sub("", _IX_HEADER.sub("", markup))  # unwrap inline XBRL so table figures survive
    text = trafilatura.extract(markup, include_tables=True, include_comments=False, favor_recall=True)
    return text.strip() if text else strip_tags(markup)


class _TextParser(HTMLParser):
    BLOCK = {"p", "div", "br", "tr", "li", "table", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "title"}
    SKIP = {"script", "style", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        self.parts.append("\n" if tag in self.BLOCK else " " if tag in ("td", "th") else "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        self.parts.append("\n" if tag in self.BLOCK else "")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def strip_tags(markup: str) -> str:
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class JsonlOutput:
    """The output file, only ever replaced whole (temp file + rename): it never holds half a record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.ids: set[str] = set()
        self._pending: list[dict[str, str]] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.ids.add(json.loads(line)["id"])

    def add(self, record: dict[str, str]) -> None:
        self._pending.append(record)
        self.ids.add(record["id"])

    def flush(self) -> None:
        if not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                if self.path.exists():
                    with self.path.open("rb") as old:
                        shutil.copyfileobj(old, out)
                        old.seek(max(old.tell() - 1, 0))
                        if old.read(1) not in (b"", b"\n"):
                            out.write(b"\n")
                out.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in self._pending)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._pending.clear()


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0  # already in the output file
    errors: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def collect(
    client: EdgarClient,
    tickers: Sequence[str],
    out: Path,
    forms: Iterable[str] = ("10-K", "10-Q"),
    limit: int | None = None,
    *,
    progress: bool = True,
    flush_every: int = 10,
    log: Callable[[str], None] = _log,
) -> Summary:
    """Append the chosen filings of every ticker to `out`, skipping those already there.

    One bad ticker or document is logged and skipped; the others are still written.
    """
    output, summary, todo = JsonlOutput(out), Summary(), []
    forms, queued = list(forms), set(output.ids)
    for ticker in tqdm(tickers, desc="EDGAR companies", unit="company", disable=not progress):
        try:
            filings = client.filings(ticker, forms, limit)
        except EdgarError as e:
            summary.errors.append(f"skipping {ticker}: {e}")
            log(f"edgar: {summary.errors[-1]}")
            continue
        fresh = [f for f in filings if f.id not in queued]  # share classes (GOOG, GOOGL) share filings
        summary.skipped += len(filings) - len(fresh)
        queued.update(f.id for f in fresh)
        todo += fresh
    try:
        for filing in tqdm(todo, desc="EDGAR filings", unit="filing", disable=not progress):
            try:
                output.add(client.record(filing))
            except EdgarError as e:
                summary.errors.append(f"skipping {filing.ticker} {filing.form} {filing.accession}: {e}")
                log(f"edgar: {summary.errors[-1]}")
                continue
            summary.written += 1
            if summary.written % flush_every == 0:
                output.flush()
    finally:
        output.flush()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch SEC EDGAR filings into a JSONL corpus.")
    parser.add_argument("--tickers", nargs="+", required=True, help="e.g. AAPL MSFT")
    parser.add_argument("--forms", nargs="+", default=["10-K", "10-Q"], help="form types (default 10-K 10-Q)")
    parser.add_argument("--limit", type=int, default=5, help="most recent matching filings per ticker")
    parser.add_argument(
        "--out", type=Path, default=Path("data_pipelines/finance/data/edgar.jsonl"), help="JSONL, appended to"
    )
    parser.add_argument(
        "--user-agent",
        help=f"'Company Name admin@example.com' (default: ${USER_AGENT_ENV}); required by EDGAR",
    )
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="licence written on every record")
    parser.add_argument("--www-base", default=WWW_BASE, help="www.sec.gov base URL (mirrors, tests)")
    parser.add_argument("--data-base", default=DATA_BASE, help="data.sec.gov base URL (mirrors, tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        client = EdgarClient(
            args.user_agent, license=args.license, www_base=args.www_base, data_base=args.data_base
        )
    except EdgarError as e:
        print(f"edgar: {e}", file=sys.stderr)  # noqa: T201 - the command's error message
        return 2
    summary = collect(client, args.tickers, args.out, args.forms, args.limit, progress=not args.no_progress)
    print(  # noqa: T201 - the command's summary line
        f"edgar: wrote {summary.written} filings to {args.out} "
        f"({summary.skipped} already there, {len(summary.errors)} skipped on errors)",
        file=sys.stderr,
    )
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())
