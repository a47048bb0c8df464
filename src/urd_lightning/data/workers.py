"""How loader and foreground worker processes are started: never forked from the training process.

A worker forked from a process that has used OpenCV's thread pool (GrabCut during ``setup``, connected components
during an evaluation, the demo generator) inherits the pool's locks in their locked state and blocks forever in its
first ``cv2.setNumThreads`` — training then hangs at iteration 0 without a message. The same holds for other
per-process state a fork copies (OpenMP pools, a user's threads). So every worker starts from a *forkserver*: a
fresh interpreter, started once per process, that has imported only the data code (``PRELOAD``) and forks the
workers from that clean state. Starting a worker then costs a fork, not an interpreter start. Where forkserver does
not exist (Windows), ``spawn`` is the clean equivalent.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

import cv2

# Imported once by the forkserver so that each forked worker starts with them loaded. Not "__main__": a user's
# script without an ``if __name__ == "__main__"`` guard would otherwise run again inside the server.
PRELOAD = ["urd_lightning.data.dataset", "urd_lightning.data.foreground"]


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
