"""Several nodes, one run (`nodes.py`): which node this is (Slurm or torchrun's variables), and
two orchestrators on this machine — node ranks 0 and 1, a 127.0.0.1 rendezvous, gloo, one shared
run directory — through cpt → sft → dpo → distill of the tiny profile; then node 1 killed mid-stage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verticalft.nodes import Node, NodeError, Watch, this_node

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_variables_name_the_node_and_missing_ones_are_named():
    env = {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501"}
    assert this_node(2, env) == Node(1, 2, "10.0.0.1", "29501")
    assert this_node(1, env) is None  # one node: nothing to coordinate
    with pytest.raises(NodeError, match="set MASTER_ADDR, MASTER_PORT on every node"):
        this_node(2, {"NODE_RANK": "0"})
    with pytest.raises(NodeError, match="NODE_RANK=2 is not in 0..1"):
        this_node(2, {**env, "NODE_RANK": "2"})


def test_slurm_variables_and_the_first_host_of_the_node_list(tmp_path):
    # scontrol cannot exist here (no Slurm): a stand-in that expands the list as Slurm would
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    fake.chmod(0o755)
    env = {"SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp_path}:{path}"
    try:
        assert this_node(2, env) == Node(1, 2, "gpu07", "29500")  # torchrun's default port
        assert this_node(2, {**env, "MASTER_PORT": "6000"}).master_port == "6000"
        with pytest.raises(NodeError, match="SLURM_NNODES=2"):
            this_node(4, env)
    finally:
        os.environ["PATH"] = path
    os.environ["PATH"] = str(tmp_path / "empty")
    try:
        with pytest.raises(NodeError, match="export MASTER_ADDR"):
            this_node(2, env)
    finally:
        os.environ["PATH"] = path


def test_a_node_whose_heartbeat_stops_is_gone_after_the_timeout(tmp_path):
    watch = Watch(tmp_path, [1], timeout_s=0.3)
    (tmp_path / "alive-1").write_text('{"beat": 1}')
    assert watch.gone() == {}
    time.sleep(0.2)
    (tmp_path / "alive-1").write_text('{"beat": 2}')  # it moved: still here
    assert watch.gone() == {}
    time.sleep(0.4)
    assert list(watch.gone()) == [1]  # silent for longer than the timeout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(rank: int, runs: Path, port: int, log: Path) -> subprocess.Popen:
    sets = [
        "compute.nodes=2",
        "compute.gpus_per_node=1",
        "compute.launcher=torchrun",
        "compute.node_timeout_s=15",
        "stages.cpt.trainer.max_steps=3",
        "stages.sft.trainer.max_steps=3",
        "stages.dpo.trainer.max_steps=2",
        "stages.distill.max_examples=32",
        "stages.distill.trainer.max_steps=3",
        "evaluation.max_items=4",
    ]
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--until", "distill", "--runs-dir", str(runs)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "NODE_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "verticalft.cli", *args, *[x for s in sets for x in ("--set", s)]],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the kill below takes node 1's whole process group
    )


@pytest.fixture
def started():
    """Every orchestrator a test starts, killed with its process group at the end, pass or fail."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.slow
def test_two_nodes_run_cpt_sft_distill_once_and_a_killed_node_is_named(tmp_path, started):
    runs, port = tmp_path / "runs", _free_port()
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    follower = _start(1, runs, port, logs[1])  # the order nodes start in does not matter
    leader = _start(0, runs, port, logs[0])
    started += [follower, leader]
    assert leader.wait(timeout=900) == 0, logs[0].read_text()[-4000:]
    assert follower.wait(timeout=120) == 0, logs[1].read_text()[-4000:]
    out0, out1 = logs[0].read_text(), logs[1].read_text()

    root = runs / "finance" / "tiny"
    stages = ["tiny_models", "curate", "cpt", "sft", "dpo", "distill"]
    attempts = [json.loads(x) for x in (root / "attempts.jsonl").read_text().splitlines()]
    assert [a["stage"] for a in attempts] == stages  # each stage once, by node 0
    manifest = json.loads((root / "manifest.json").read_text())["stages"]
    for stage in ("cpt", "sft", "dpo"):  # one process per node, two in all
        assert manifest[stage]["status"] == "done" and manifest[stage]["metrics"]["world_size"] == 2
    assert manifest["distill"]["status"] == "done"
    # node 0 ran the in-process stages; node 1 only its share of each launch
    assert "curate: running" in out0 and "curate: running" not in out1
    for stage in ("cpt", "sft", "dpo", "distill"):
        assert f"node 1: [{stages.index(stage) + 1}/6] {stage}: launching this node's share" in out1
    assert "node 1: [2/6] curate: done on node 0" in out1
    assert "node 1's part (node 0 writes the report)" in out1 and "report:" not in out1
    for stage in ("cpt", "sft", "dpo", "distill"):  # node 1's share of each launch ended well
        assert json.loads((root / "nodes" / f"exit-{stage}-1.json").read_text()) == {"code": 0}

    # node 1 killed mid-stage: node 0 fails, naming node 1, within the heartbeat timeout
    (root / "manifest.json").unlink()  # a fresh run in the same folder
    (root / "attempts.jsonl").unlink()
    port = _free_port()
    follower = _start(1, runs, port, logs[1])
    leader = _start(0, runs, port, logs[0])
    started += [follower, leader]
    share = root / "nodes" / "stage-cpt.json"
    deadline = time.time() + 600
    while not (share.exists() and '"running"' in share.read_text() and "launching" in logs[1].read_text()):
        assert leader.poll() is None and follower.poll() is None, logs[0].read_text()[-3000:]
        assert time.time() < deadline, "cpt never launched on both nodes"
        time.sleep(0.5)
    time.sleep(3)  # inside the launch
    os.killpg(follower.pid, signal.SIGKILL)
    started = time.time()
    code = leader.wait(timeout=300)
    out0 = logs[0].read_text()
    assert code == 1, out0[-3000:]
    assert "node 1" in out0 and (
        "stopped answering during cpt" in out0 or "node 1's workers exited" in out0
    ), out0[-3000:]
    assert time.time() - started < 200  # failed, did not hang
    assert json.loads(share.read_text())["state"] == "failed"
