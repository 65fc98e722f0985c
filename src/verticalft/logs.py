"""Where the package's progress lines go. Library modules log through `logging.getLogger(__name__)`
(never `print`: ruff's T20 rejects it); an entry point decides who reads the records.

- `verticalft …` (cli.py) sends them to its rich console, beside the command's own output;
- a launched stage's ranks (worker.py) and the vLLM offline child (serving/offline.py) send them to
  stdout, which their parent passes on (the terminal; the child's `vllm.log`).

A record shows as its message alone, one line, as the bare prints it replaces did: INFO is
progress, WARNING something to read. Without an entry point (a test, a notebook) the records
follow Python's logging defaults: warnings to stderr, progress dropped unless configured.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

PACKAGE = "verticalft"


class LineHandler(logging.Handler):
    """Each record, formatted as its message, to `write` (stdout unless told)."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.write = write or _to_stdout
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging's contract: a broken handler never raises
            self.handleError(record)


def _to_stdout(line: str) -> None:
    sys.stdout.write(line + "\n")  # sys.stdout read now: whatever it is when the record comes
    sys.stdout.flush()  # progress, seen as it happens (a launched rank's stdout is a pipe)


def show_logs(write: Callable[[str], None] | None = None, level: int = logging.INFO) -> LineHandler:
    """Send the package's records at `level` and above to `write` (stdout unless told).

    Replaces the handler an earlier call added, so a process that runs several commands (the CLI
    under test) shows each line once.
    """
    logger = logging.getLogger(PACKAGE)
    for old in [h for h in logger.handlers if isinstance(h, LineHandler)]:
        logger.removeHandler(old)
    handler = LineHandler(write)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
