"""How loader and foreground worker processes are started: never forked from the training process.

A worker forked from a process that has used OpenCV's thread pool (GrabCut during ``setup``, connected components
during an evaluation, the demo generator) inherits the pool's locks in their locked state and blocks forever in its
first ``cv2.setNumThreads`` — training then hangs at iteration 0 without a message. The same holds for other
per-process state a fork copies (OpenMP pools, a user's threads). So every worker starts from a *forkserver*: a
fresh interpreter, started once per process, that has imported only the data code (``PRELOAD``) and forks the
workers from that clean state. Starting a worker then costs a fork, not an interpreter start. Where forkserver does
not exist (Windows), ``spawn`` is the clean equivalent.

As with any spawned or forkserver worker, Python re-imports the main module in each worker under the name
``__mp_main__``: a user's own training script needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

import cv2

# Imported once by the forkserver so that each forked worker starts with them loaded. Not "__main__": a user's
# script without an ``if __name__ == "__main__"`` guard would otherwise run again inside the server.
PRELOAD = ["urd_lightning.data.dataset", "urd_lightning.data.foreground"]


def _forget_inherited_forkserver() -> None:
    """In a forked child, drop the parent's forkserver so that the child starts its own.

    A process forked from one that already runs a forkserver (a ``ddp_fork`` rank after the foreground masks were
    computed in the launching process) inherits the server's handle, but the server is not its child:
    multiprocessing's liveness check (``os.waitpid``) then fails there with ChildProcessError.
    """
    server = forkserver._forkserver  # the module's singleton (same attribute names in Python 3.10-3.14)
    for attribute in ("_forkserver_pid", "_forkserver_address", "_forkserver_alive_fd"):
        if hasattr(server, attribute):
            setattr(server, attribute, None)
    server._lock = threading.Lock()  # a lock held by another thread at the fork would stay locked forever


os.register_at_fork(after_in_child=_forget_inherited_forkserver)


def worker_context() -> BaseContext:
    """The start method for loader and foreground workers: forkserver (spawn where it does not exist)."""
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return mp.get_context("spawn")


def init_worker(_: int = 0) -> None:
    """Worker start-up: one OpenCV thread (each worker is one process already; more threads oversubscribe)."""
    cv2.setNumThreads(1)  # safe here: the worker comes from a clean forkserver, never from a forked thread pool
