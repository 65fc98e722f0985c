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
    libc = _LIBC

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec
