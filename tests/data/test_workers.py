"""Loader and foreground workers never hang, whatever OpenCV did in the training process first.

A worker forked after the main process used OpenCV's thread pool blocked forever in ``cv2.setNumThreads``. Each
case runs in a fresh interpreter (the pytest process's own thread state must not decide the outcome) under a
generous subprocess timeout: it is a hang guard that turns a regression into a failure, not a speed limit.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from urd_lightning.data.foreground import foreground_masks

HANG_GUARD_S = 900  # far above the seconds these take on a loaded 2-core machine; only a deadlock reaches it
REPO = Path(__file__).resolve().parents[2]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)


def test_loader_workers_start_after_grabcut_ran_in_this_process(mvtec_root, tmp_path):
    code = f"""
        import numpy as np
        from urd_lightning.data.datamodule import AnomalyDataModule
        from urd_lightning.data.foreground import compute_foreground
        # The trigger: GrabCut in the main process leaves OpenCV's thread pool behind.
        compute_foreground(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8), "grabcut", 64)
        dm = AnomalyDataModule("mvtec", root={str(mvtec_root)!r}, category="bottle", image_size=32,
                               train_batch_size=2, eval_batch_size=4, num_workers=2, foreground="grabcut",
                               cache_dir={str(tmp_path / "cache")!r})
        dm.setup("fit")
        for epoch in range(2):  # persistent workers across an epoch boundary, then the test loader's workers
            dm.set_epoch(epoch)
            n = sum(1 for _ in dm.train_dataloader())
        m = sum(1 for _ in dm.test_dataloader())
        print("OK", n, m)
    """
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[:3] == ["OK", "3", "2"]  # 6 train images / 2; 7 test images / 4


def test_train_with_grabcut_on_empty_cache_and_periodic_eval_across_epochs(mvtec_root, tmp_path):
    # The two original failures in one run: grabcut foregrounds on an empty cache with two loader workers, and
    # periodic evaluation (eval.every_n_steps=2) before the epoch boundary (6 images / batch 2 = 3 per epoch).
    code = f"""
        from urd_lightning.training.train import main
        main(["dataset=mvtec", "data.root={mvtec_root}", "data.category=bottle", "data.foreground=grabcut",
              "trainer.max_steps=5", "data.train_batch_size=2", "data.num_workers=2", "data.image_size=32",
              "model.backbone=resnet18", "model.pretrained=false", "logger=none", "eval.every_n_steps=2",
              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "output_dir={tmp_path / 'out'}",
              "data.cache_dir={tmp_path / 'cache'}", "eval.num_samples=0"])
    """
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("grabcut-32-*.png"))) == 6
    assert list((tmp_path / "out").rglob("metrics.json"))


def test_foreground_workers_give_the_masks_of_one_process(mvtec_root, tmp_path):
    paths = sorted(str(p) for p in (mvtec_root / "bottle" / "train" / "good").glob("*.png"))
    parallel = foreground_masks(paths, "grabcut", 32, tmp_path / "a", progress=False, workers=2)
    serial = foreground_masks(paths, "grabcut", 32, tmp_path / "b", progress=False, workers=0)
    cached = foreground_masks(paths, "grabcut", 32, tmp_path / "a", progress=False, workers=2)  # all from cache
    assert len(parallel) == len(paths) == 6
    for a, b, c in zip(parallel, serial, cached, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_a_forked_process_starts_its_own_forkserver(tmp_path):
    # A ddp_fork rank is forked after the launching process may have started the forkserver (foreground masks in
    # setup); multiprocessing's check of the inherited server (os.waitpid on a process that is not its child)
    # would fail there.
    code = """
        import math, os
        from concurrent.futures import ProcessPoolExecutor
        from urd_lightning.data.workers import worker_context
        if __name__ == "__main__":
            with ProcessPoolExecutor(1, mp_context=worker_context()) as pool:
                assert list(pool.map(math.sqrt, [4])) == [2.0]
            pid = os.fork()
            if pid == 0:
                with ProcessPoolExecutor(1, mp_context=worker_context()) as pool:
                    ok = list(pool.map(math.sqrt, [9])) == [3.0]
                os._exit(0 if ok else 3)  # after the pool has shut down: no orphaned worker keeps the pipes open
            print("child exit", os.waitpid(pid, 0)[1] >> 8)
    """
    script = tmp_path / "fork_after_forkserver.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0 and done.stdout.strip() == "child exit 0", done.stderr[-3000:]
