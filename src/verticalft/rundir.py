"""The run directory: `runs/<recipe>/<profile>/`, its manifest and done-markers.

Rules:
- A stage is done only when `<stage>/DONE.json` exists and carries the stage's current
  fingerprint. The marker is written last, atomically (write temp file, fsync, rename), so a
  killed stage is never mistaken for a done one.
- A stage's fingerprint hashes its own recipe section, the content of its input files and the
  fingerprints of the stages it consumes; same fingerprint → skip, `--force` → rerun.
- A fingerprint cannot see that an earlier stage *ran again* with the same inputs (a resumed
  kill, `--force`) and wrote new outputs. So every done-marker carries a fresh completion id and
  the completion ids of the stages it read (`after`); a stage whose `after` no longer matches is
  stale and reruns.
- Stages find each other's outputs only through the manifest, never by globbing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
DONE = "DONE.json"
RUNNING = "RUNNING.json"
ATTEMPTS = "attempts.jsonl"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(
    path: Path, rows: Iterable[dict[str, Any]], *, sort_keys: bool = False, ensure_ascii: bool = False
) -> int:
    """Write `rows` as JSON lines, atomically (a reader never sees half a file); returns the count.

    The keywords are `json.dumps`'s: `sort_keys` for files compared byte for byte whatever order a
    row's keys were built in (curate's local and Ray runs), `ensure_ascii` for rows that may carry
    text UTF-8 cannot encode (a lone surrogate from a `\\ud800` escape in a quarantined row).
    """
    lines = [json.dumps(r, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=str) + "\n" for r in rows]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def hash_file(path: Path, _cache: dict[tuple[str, float, int], str] = {}) -> str:  # noqa: B006 - memo
    """sha256 of a file (or of every file under a folder, in sorted order)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(hash_file(p).encode())
        return h.hexdigest()
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    status: str = "pending"  # pending | running | done | failed
    fingerprint: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0
    started_at: str = ""
    finished_at: str = ""
    error: str = ""


class RunDir:
    """One run directory; all reads and writes of the manifest go through here."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def record(self, stage: str) -> StageRecord:
        raw = self.manifest()["stages"].get(stage)
        return StageRecord(**raw) if raw else StageRecord()

    def update(self, stage: str, record: StageRecord) -> None:
        # Read-modify-write under a lock file: a multi-process launcher's rank 0 and the
        # orchestrator may both touch the manifest.
        with self._lock():
            data = self.manifest()
            data["stages"][stage] = record.__dict__
            data["updated_at"] = _now()
            atomic_write_json(self.manifest_path, data)

    def set_meta(self, **meta: Any) -> None:
        with self._lock():
            data = self.manifest()
            data.update(meta)
            atomic_write_json(self.manifest_path, data)

    @contextmanager
    def _lock(self):
        import fcntl

        with (self.root / ".manifest.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ---- stage folders and markers
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def _marker(self, stage: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.stage_dir(stage) / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def is_done(self, stage: str, fp: str | None = None, after: dict[str, str | None] | None = None) -> bool:
        """Done with fingerprint `fp` (any, when None) and, when `after` is given, on the same
        completions of the stages it read (markers written before completion ids count as same)."""
        done = self._marker(stage, DONE)
        if done is None or self.record(stage).status != "done":
            return False
        if fp is not None and done.get("fingerprint") != fp:
            return False
        return after is None or "after" not in done or done["after"] == after

    def completion(self, stage: str) -> str | None:
        """The id of the stage's last completed run (None when not done): a later stage records it."""
        done = self._marker(stage, DONE) if self.record(stage).status == "done" else None
        return done.get("completion") if done else None

    def interrupted(self, stage: str) -> bool:
        """Marked running, but the process that ran it (on this host) is gone: killed."""
        if self.record(stage).status != "running":
            return False
        running = self._marker(stage, RUNNING)
        if running is None:
            return True
        if running.get("host", socket.gethostname()) != socket.gethostname():
            return False  # another machine's process (shared filesystem): cannot tell from here
        return not _pid_alive(int(running.get("pid", 0)))

    # ---- attempts: every run of a stage costs GPU time, not only the one that finished
    @property
    def attempts_path(self) -> Path:
        return self.root / ATTEMPTS

    def log_attempt(self, stage: str, status: str, seconds: float, fingerprint: str = "") -> None:
        """Append one attempt (done | failed | killed) to `attempts.jsonl`."""
        entry = {
            "stage": stage,
            "status": status,
            "seconds": round(seconds, 2),
            "fingerprint": fingerprint,
            "at": _now(),
        }
        with self._lock(), self.attempts_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def attempts(self, stage: str | None = None) -> list[dict[str, Any]]:
        if not self.attempts_path.is_file():
            return []
        rows = [json.loads(line) for line in self.attempts_path.read_text().splitlines() if line.strip()]
        return [r for r in rows if stage is None or r["stage"] == stage]

    def _log_killed(self, stage: str) -> None:
        """A killed attempt cannot log itself: the next attempt does, with the time from its start
        to the newest file it wrote (a lower bound on what it ran)."""
        running = self._marker(stage, RUNNING)
        if not running or "t0" not in running or not self.interrupted(stage):
            return
        newest = max(
            (p.stat().st_mtime for p in self.stage_dir(stage).rglob("*") if p.is_file()), default=0.0
        )
        self.log_attempt(
            stage, "killed", max(0.0, newest - float(running["t0"])), running.get("fingerprint", "")
        )

    def begin_forced(self, stage: str) -> None:
        """A forced rerun starts afresh (no resume), after logging a killed attempt it replaces."""
        self._log_killed(stage)
        (self.stage_dir(stage) / RUNNING).unlink(missing_ok=True)

    def begin(self, stage: str, fp: str, inputs: dict[str, Any]) -> tuple[StageRecord, bool]:
        """Mark a stage running. Returns (record, resumable): resumable when a killed attempt with
        the same fingerprint left its folder behind; otherwise the folder is cleared."""
        sdir = self.stage_dir(stage)
        running = sdir / RUNNING
        resumable = False
        self._log_killed(stage)
        if running.exists():
            try:
                resumable = json.loads(running.read_text()).get("fingerprint") == fp
            except (json.JSONDecodeError, OSError):
                resumable = False
        if not resumable and sdir.exists():
            shutil.rmtree(sdir)
        (sdir / DONE).unlink(missing_ok=True)
        sdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            running,
            {
                "fingerprint": fp,
                "started_at": _now(),
                "t0": time.time(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
        )
        record = StageRecord(status="running", fingerprint=fp, inputs=inputs, started_at=_now())
        self.update(stage, record)
        return record, resumable

    def finish(self, stage: str, record: StageRecord, after: dict[str, str | None] | None = None) -> None:
        """Outputs are written; now the manifest, and the done-marker last of all. `after`: the
        completion ids of the stages this one read (see the module docstring)."""
        record.status = "done"
        record.finished_at = _now()
        record.error = ""
        self.update(stage, record)
        atomic_write_json(
            self.stage_dir(stage) / DONE,
            {
                "fingerprint": record.fingerprint,
                "finished_at": record.finished_at,
                "completion": uuid.uuid4().hex,
                "after": after or {},
            },
        )
        (self.stage_dir(stage) / RUNNING).unlink(missing_ok=True)

    def fail(self, stage: str, record: StageRecord, error: str) -> None:
        record.status = "failed"
        record.error = error
        record.finished_at = _now()
        self.update(stage, record)

    def output(self, stage: str, key: str) -> str | None:
        """An output of a *completed* stage, from the manifest."""
        rec = self.record(stage)
        return rec.outputs.get(key) if rec.status == "done" else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
