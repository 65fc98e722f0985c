"""Several nodes, one run: node 0 leads, the others take part in the launched stages only.

Every node runs the same `verticalft run` command. Node 0 (the leader) is the orchestrator of
one node: it runs the in-process stages (curate, eval, bench, …), writes the manifest, the
markers and the models. Another node (a follower) writes none of that: it waits for node 0's
word on each stage and, for a launched (training) stage, starts its own share of the processes
(`torchrun`/`accelerate launch` with its node rank), which meet node 0's at the rendezvous.

They talk through files in `<run>/nodes/`, so the run directory must be on storage every node
sees under the same path (the HF cache too: the workers of every node load the same models):

- `hello-<k>.json`: follower k is here (a fresh nonce per start, rewritten until node 0 answers);
- `session.json`: node 0 saw every follower's hello (their nonces) — a follower that reads its own
  nonce back knows the two directions work; it lists the stages and ends as finished or failed;
- `stage-<name>.json`: node 0's word on a stage (launch / local / skip; running, done, failed);
- `exit-<name>-<k>.json`: how follower k's share of a launched stage ended;
- `alive-<k>`: a counter each node bumps every few seconds. A node whose counter has not moved
  for `compute.node_timeout_s` is gone (read against the reader's own clock: no clock sync needed).

Which node this is comes from the scheduler (Slurm: SLURM_NODEID, SLURM_NNODES, the first host of
SLURM_JOB_NODELIST through `scontrol show hostnames`) or torchrun's variables (NODE_RANK,
MASTER_ADDR, MASTER_PORT), which a user exports by hand on each node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verticalft.rundir import atomic_write_json

DEFAULT_PORT = "29500"  # torchrun's default
POLL_S = 0.5


class NodeError(RuntimeError):
    """Nodes that cannot work together: what is wrong and which node, never a hang."""


@dataclass(frozen=True)
class Node:
    """This node's place in a multi-node run."""

    rank: int
    nodes: int
    master_addr: str
    master_port: str

    @property
    def leads(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[01-04]" → "gpu01"), as Slurm expands it."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise NodeError(
            f"SLURM_JOB_NODELIST={nodelist} but `scontrol` is not on PATH to expand it: "
            "export MASTER_ADDR (node 0's address) yourself"
        )
    out = subprocess.run(
        [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise NodeError(f"`scontrol show hostnames {nodelist}` failed: {out.stderr.strip() or 'no hosts'}")
    return hosts[0]


def this_node(nodes: int, env: Mapping[str, str] | None = None) -> Node | None:
    """This node from the scheduler's variables (module docstring); None on one node. A missing
    variable, or a node count that disagrees with `compute.nodes`, is an error that names it."""
    env = os.environ if env is None else env
    if nodes == 1:
        return None
    port = env.get("MASTER_PORT") or DEFAULT_PORT
    if env.get("SLURM_NODEID") is not None and env.get("SLURM_NNODES") is not None:
        if int(env["SLURM_NNODES"]) != nodes:
            raise NodeError(
                f"compute.nodes={nodes} but Slurm gave this job SLURM_NNODES={env['SLURM_NNODES']} "
                "(sbatch --nodes must match)"
            )
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", ""))
        return Node(int(env["SLURM_NODEID"]), nodes, addr, port)
    missing = [n for n in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(n)]
    if missing:
        raise NodeError(
            f"compute.nodes={nodes}: set {', '.join(missing)} on every node (NODE_RANK 0..{nodes - 1}, "
            "MASTER_ADDR/MASTER_PORT of node 0) and run the same `verticalft run` command on each "
            "(under Slurm, srun sets SLURM_NODEID and SLURM_JOB_NODELIST instead)"
        )
    rank = int(env["NODE_RANK"])
    if not 0 <= rank < nodes:
        raise NodeError(f"NODE_RANK={rank} is not in 0..{nodes - 1} (compute.nodes={nodes})")
    return Node(rank, nodes, env["MASTER_ADDR"], port)


class Heartbeat:
    """Bumps `alive-<rank>` every `period` seconds in a daemon thread, until `stop()`."""

    def __init__(self, folder: Path, rank: int, period: float) -> None:
        self.path, self.period = folder / f"alive-{rank}", period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{rank}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            atomic_write_json(self.path, {"beat": n, "pid": os.getpid()})
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Watch:
    """When each other node's heartbeat last moved, on this node's clock."""

    def __init__(self, folder: Path, ranks: list[int], timeout_s: float) -> None:
        self.folder, self.timeout_s = folder, timeout_s
        now = time.monotonic()
        self.seen: dict[int, tuple[Any, float]] = {k: (None, now) for k in ranks}

    def gone(self) -> dict[int, float]:
        """Nodes silent for longer than the timeout: rank → seconds since their last beat."""
        now, out = time.monotonic(), dict[int, float]()
        for k, (last, since) in self.seen.items():
            beat = _read(self.folder / f"alive-{k}")
            if beat is not None and beat != last:
                self.seen[k] = (beat, now)
            elif now - since > self.timeout_s:
                out[k] = round(now - since)
        return out


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught mid-replace on a network filesystem
        return None


class Leader:
    """Node 0's side: the handshake, then its word on every stage."""

    def __init__(self, root: Path, node: Node, timeout_s: float) -> None:
        self.folder, self.node, self.timeout_s = root / "nodes", node, timeout_s
        self.followers = list(range(1, node.nodes))
        self.session = uuid.uuid4().hex
        self.heartbeat: Heartbeat | None = None
        self.watch = Watch(self.folder, self.followers, timeout_s)

    def start(self, stages: list[str], wait_s: float) -> None:
        """Wait for every follower's hello (written since this start, or just before it), then
        acknowledge them all in `session.json`. No hello in `wait_s`: the error says what to check."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("stage-*.json"):
            old.unlink()
        stamp = self.folder / "leader-start"
        stamp.write_text(self.session)
        # a follower rewrites its hello until acknowledged: one written since this start is live,
        # an older one is a previous run's (same filesystem clock for both mtimes)
        since = stamp.stat().st_mtime
        self.heartbeat = Heartbeat(self.folder, 0, min(5.0, self.timeout_s / 4)).start()
        hellos: dict[int, str] = {}
        deadline = time.monotonic() + wait_s
        while len(hellos) < len(self.followers):
            for k in self.followers:
                path = self.folder / f"hello-{k}.json"
                fresh = k not in hellos and path.exists() and path.stat().st_mtime >= since
                if fresh and (hello := _read(path)) is not None:
                    hellos[k] = hello["nonce"]
            if time.monotonic() > deadline:
                missing = [k for k in self.followers if k not in hellos]
                raise NodeError(
                    f"node 0: node(s) {', '.join(map(str, missing))} never appeared in {self.folder} within "
                    f"{wait_s:.0f} s. Start the same `verticalft run` on every node, with the run directory "
                    "on storage every node sees under the same path (NFS, Lustre, a shared volume)"
                )
            time.sleep(POLL_S)
        atomic_write_json(
            self.folder / "session.json",
            {
                "session": self.session,
                "hellos": {str(k): v for k, v in hellos.items()},
                "stages": stages,
                "state": "running",
            },
        )

    def stage(
        self, stage: str, action: str, state: str, resume: bool = False, error: str | None = None
    ) -> None:
        """Node 0's word on a stage: action launch | local | skip; state running | done | failed."""
        atomic_write_json(
            self.folder / f"stage-{stage}.json",
            {
                "session": self.session,
                "stage": stage,
                "action": action,
                "state": state,
                "resume": resume,
                "error": error,
            },
        )
        if action == "launch" and state == "running":
            for k in self.followers:
                (self.folder / f"exit-{stage}-{k}.json").unlink(missing_ok=True)

    def gone(self, stage: str) -> str | None:
        """Which followers stopped answering while `stage` ran, in words (None: all answer)."""
        gone = self.watch.gone()
        return _gone_message(gone, stage) if gone else None

    def why_launch_failed(self, stage: str) -> str:
        """Which node took the launch down: a follower whose share exited non-zero or that went
        silent (waited for up to the heartbeat timeout), else node 0's own workers."""
        deadline = time.monotonic() + self.timeout_s + 2 * POLL_S
        while time.monotonic() < deadline:
            for k in self.followers:
                done = _read(self.folder / f"exit-{stage}-{k}.json")
                if done is not None and done.get("code") != 0:
                    return f"node {k}'s workers exited with code {done.get('code')} (see node {k}'s output)"
            if gone := self.gone(stage):
                return gone
            if all((self.folder / f"exit-{stage}-{k}.json").exists() for k in self.followers):
                return "the workers on node 0 failed (the other nodes' shares were stopped with them)"
            time.sleep(POLL_S)
        return "the workers on node 0 failed"

    def finish(self, ok: bool) -> None:
        session = _read(self.folder / "session.json") or {}
        atomic_write_json(self.folder / "session.json", {**session, "state": "finished" if ok else "failed"})
        if self.heartbeat:
            self.heartbeat.stop()


def _gone_message(gone: Mapping[int, float], stage: str) -> str:
    return "; ".join(
        f"node {k} stopped answering during {stage} (no heartbeat for {s:.0f} s): its process was killed "
        "or its machine is gone"
        for k, s in sorted(gone.items())
    )


class Follower:
    """A node other than 0: hello, then node 0's word on each stage, a share of each launch."""

    def __init__(self, root: Path, node: Node, timeout_s: float) -> None:
        self.folder, self.node, self.timeout_s = root / "nodes", node, timeout_s
        self.nonce = uuid.uuid4().hex
        self.heartbeat: Heartbeat | None = None
        self.watch = Watch(self.folder, [0], timeout_s)
        self.session: str | None = None

    def join(self, wait_s: float) -> list[str]:
        """Say hello (again every few seconds, so a node 0 that starts later sees a fresh one) until
        node 0 acknowledges it; the stages node 0 will run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.heartbeat = Heartbeat(self.folder, self.node.rank, min(5.0, self.timeout_s / 4)).start()
        deadline = time.monotonic() + wait_s
        said = 0.0
        while True:
            if time.monotonic() - said > 2.0:
                hello = {"nonce": self.nonce, "pid": os.getpid()}
                atomic_write_json(self.folder / f"hello-{self.node.rank}.json", hello)
                said = time.monotonic()
            session = _read(self.folder / "session.json")
            if session and session.get("hellos", {}).get(str(self.node.rank)) == self.nonce:
                self.session = session["session"]
                return list(session["stages"])
            if time.monotonic() > deadline:
                raise NodeError(
                    f"node {self.node.rank}: node 0 did not answer in {self.folder} within {wait_s:.0f} s. Is node 0 "
                    "running the same command, and is the run directory on storage every node sees under the "
                    "same path? (this node wrote its hello there; node 0 must see it, and this node node 0's reply)"
                )
            time.sleep(POLL_S)

    def wait_for(self, stage: str, states: tuple[str, ...]) -> dict[str, Any]:
        """Node 0's word on `stage` once it is in one of `states`; node 0 gone is an error."""
        while True:
            word = _read(self.folder / f"stage-{stage}.json")
            if word and word.get("session") == self.session and word.get("state") in states:
                return dict(word)
            session = _read(self.folder / "session.json") or {}
            if session.get("session") == self.session and session.get("state") == "failed":
                raise NodeError(
                    f"node {self.node.rank}: node 0's run failed before {stage} (see node 0's output)"
                )
            if self.watch.gone():
                raise NodeError(
                    f"node {self.node.rank}: node 0 stopped answering (no heartbeat for {self.timeout_s:.0f} s) "
                    f"while this node waited for {stage}"
                )
            time.sleep(POLL_S)

    def launched(self, stage: str, code: int) -> None:
        """How this node's share of a launched stage ended, for node 0."""
        atomic_write_json(self.folder / f"exit-{stage}-{self.node.rank}.json", {"code": code})

    def leader_gone(self) -> str | None:
        """Node 0 stopped answering, in words (None: it answers)."""
        return "node 0 stopped answering (no heartbeat)" if self.watch.gone() else None

    def stop(self) -> None:
        if self.heartbeat:
            self.heartbeat.stop()
