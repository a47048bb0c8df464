"""Data pipeline speed (training samples/s in one loader process) and the two resize methods compared.

    python experiments/bench_data.py [--images 60] [--dtd 200] [--samples 120] [--size 256] [--profile]
    python experiments/bench_data.py --resize-only
    python experiments/bench_data.py --startup [--dtd-files 5640]
    python experiments/bench_data.py --augment [--pipeline configs/augment/camera.yaml]

Writes a temporary MVTec-like category (900² PNGs, the size of MVTec bottle) and a fake DTD folder of 640×480 JPEGs
(the size of most DTD images), then times ``AnomalyDataset`` training items in this one process, as one loader
worker runs them (OpenCV and torch on one thread, as ``data/workers.py`` sets): image, Perlin mask, texture,
blend, normalisation, for DTD and for procedural textures, and:
- ``no cache``: ``data.pixel_cache_dir=null``, every image and texture decoded and resized at every use;
- ``cache, cold``: the first epoch with an empty cache (each image decoded once, then stored);
- ``cache, warm``: the same samples again, every image and texture read from the memory-mapped cache (the steady
  state of a run: a category has 60-1,000 images, so from the second epoch on).
``--profile`` prints where a warm sample's time goes (cProfile). The script also runs against code without the
pixel cache (it then measures the no-cache path only), which gave the "before" figures in ``docs/performance.md``.

Resize methods (``--resize-only``, ``data.resize``), 1024² → 256²: a blurred-noise RGB image (with and without fine
noise on top) and a mask of 1-3 px wide lines; the figures are quoted in ``data/transforms.py``.

Start-up (``--startup``): the time a run spends keying the pixel cache of DTD (``DTDTextures(root, cache_dir=...)``:
listing the folder and hashing every file) in a fresh process each time, on a DTD-like tree written to /tmp: 5,640
JPEGs in 47 class folders, ~105 KB each (DTD is ~600 MB). ``cold``: no digest memo yet (the first run on this cache
folder: every file is read and hashed); ``warm``: the next runs (the memo in the cache folder says which files are
unchanged). The first pair of figures has the files in the page cache (they were just written); the second evicts
the tree's files from the page cache before each start-up (``posix_fadvise``, these files only), as after a reboot
or on another node. Code without the memo (``PYTHONPATH=<older checkout>/src``) reads every file at every start-up,
which gives the "before" figures.

Augmentation (``--augment``, ``data.augment``): warm-cache samples/s with DTD textures, ``false`` beside ``flips``
and an albumentations pipeline (default ``configs/augment/camera.yaml``: Affine shift/scale/rotate, colour jitter,
Gaussian blur): every sample timed with each setting in turn (the load of a shared machine drifts, and each setting
then sees the same drift), ``--rounds`` passes; samples/s is one over the median time per sample; the load average
before and after is printed. ``--profile`` adds where the pipeline's samples spend their time.

Figures: ``docs/performance.md``, section "Data pipeline (CPU)".
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def _time(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def compare_resize(size: int = 256, source: int = 1024, repeat: int = 20) -> None:
    from urd_lightning.data.transforms import Resizer

    if "method" not in inspect.signature(Resizer).parameters:
        print("resize methods: this version has only the OpenCV resize")
        return
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (source, source, 3), dtype=np.uint8), (0, 0), 2)
    detailed = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)  # fine texture
    pil, cv = Resizer(size, "pil"), Resizer(size, "cv2")
    for name, image in (("blurred noise", smooth), ("blurred noise + fine noise", detailed)):
        diff = np.abs(pil(image)[0].astype(np.int16) - cv(image)[0].astype(np.int16))
        print(f"resize {source}²→{size}² RGB {name}, cv2 vs pil: mean |diff| {diff.mean():.2f} grey levels, "
              f"max {diff.max()}")
    mask = np.zeros((source, source), np.uint8)
    for _ in range(30):
        p0, p1 = rng.integers(0, source, 2), rng.integers(0, source, 2)
        cv2.line(mask, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1, int(rng.integers(1, 4)))
    a, b = pil.resize_mask(mask) > 0, cv.resize_mask(mask) > 0
    iou = (a & b).sum() / max((a | b).sum(), 1)
    print(f"thin-line mask (1-3 px lines) {source}²→{size}²: IoU cv2 vs pil {iou:.3f} (pil {a.sum()} px, "
          f"cv2 {b.sum()} px)")
    t_pil, t_cv = _time(lambda: pil(image), repeat), _time(lambda: cv(image), repeat)
    print(f"resize time per image: pil {1e3 * t_pil:.2f} ms, cv2 {1e3 * t_cv:.2f} ms ({t_pil / t_cv:.1f}x)")


def write_data(root: Path, images: int, dtd: int) -> tuple[list[Path], Path]:
    rng = np.random.default_rng(0)
    train = root / "bottle" / "train" / "good"
    train.mkdir(parents=True)
    paths = []
    for i in range(images):  # smooth content with some detail, as a photographed object compresses
        image = cv2.GaussianBlur(rng.integers(0, 256, (900, 900, 3), dtype=np.uint8), (0, 0), 3)
        paths.append(train / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), image)
    for i in range(dtd):
        folder = root / "dtd" / "images" / f"class{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        texture = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 1.5)
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), texture, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths, root / "dtd"


def bench_pipeline(args: argparse.Namespace) -> None:
    from urd_lightning.data.benchmarks import Sample
    from urd_lightning.data.dataset import AnomalyDataset
    from urd_lightning.data.synthesis import DTDTextures, ProceduralTextures

    cached = "pixel_cache_dir" in inspect.signature(AnomalyDataset).parameters
    with tempfile.TemporaryDirectory() as tmp:
        paths, dtd_root = write_data(Path(tmp), args.images, args.dtd)
        samples = [Sample(str(p), None, 0, "good") for p in paths]
        n = args.samples
        for texture in ("dtd", "procedural"):
            modes = ["no cache", "cache, cold", "cache, warm"] if cached else ["no cache"]
            for mode in modes:
                cache_dir = str(Path(tmp) / "cache" / texture) if mode != "no cache" else None
                kwargs = {"cache_dir": cache_dir} if cached else {}
                source = DTDTextures(dtd_root, **kwargs) if texture == "dtd" else ProceduralTextures(**kwargs)
                data_kwargs = {"pixel_cache_dir": cache_dir} if cached else {}
                dataset = AnomalyDataset(samples, args.size, train=True, source=source, **data_kwargs)
                items = [(1, i % len(samples)) for i in range(n)]
                if mode == "cache, warm":
                    for item in items:  # fill the cache: the timed pass then reads every image and texture
                        dataset[item]
                start = time.perf_counter()
                for item in items:
                    dataset[item]
                rate = n / (time.perf_counter() - start)
                print(f"{texture:<10} {mode:<12} {rate:7.1f} samples/s ({1e3 / rate:.2f} ms/sample)", flush=True)
                if args.profile and mode == modes[-1]:
                    profile = cProfile.Profile()
                    profile.enable()
                    for item in items:
                        dataset[item]
                    profile.disable()
                    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


class _Timed:
    """The pipeline's calls, timed where the dataset makes them (between the cache read and synthesis)."""

    def __init__(self, pipeline, times: list[float]) -> None:
        self.pipeline, self.times = pipeline, times

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.pipeline(*args)
        self.times.append(time.perf_counter() - start)
        return out


def bench_augment(args: argparse.Namespace) -> None:
    from urd_lightning.data.benchmarks import Sample
    from urd_lightning.data.dataset import AnomalyDataset
    from urd_lightning.data.synthesis import DTDTextures

    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)", flush=True)
    settings = {"none": False, "flips": "flips", Path(args.pipeline).stem: args.pipeline}
    with tempfile.TemporaryDirectory() as tmp:
        paths, dtd_root = write_data(Path(tmp), args.images, args.dtd)
        samples = [Sample(str(p), None, 0, "good") for p in paths]
        cache = str(Path(tmp) / "cache")
        source = DTDTextures(dtd_root, cache_dir=cache)
        datasets = {name: AnomalyDataset(samples, args.size, train=True, source=source, augment=augment,
                                         pixel_cache_dir=cache) for name, augment in settings.items()}
        items = [(1, i % len(samples)) for i in range(args.samples)]
        for item in items:  # fill the cache: every timed pass reads images and textures from it (warm)
            datasets["none"][item]
        pipeline_times: list[float] = []
        datasets[Path(args.pipeline).stem].pipeline = _Timed(datasets[Path(args.pipeline).stem].pipeline,
                                                             pipeline_times)
        # Sample by sample, the settings in turn: a shared machine's load drifts over seconds, and each setting
        # then sees the same drift. The median per-sample time is the figure; the spread says how loaded it was.
        times: dict[str, list[float]] = {name: [] for name in datasets}
        for _ in range(args.rounds):
            for item in items:
                for name, dataset in datasets.items():
                    start = time.perf_counter()
                    dataset[item]
                    times[name].append(time.perf_counter() - start)
        for name, got in times.items():
            got = sorted(got)
            median, low, high = got[len(got) // 2], got[len(got) // 10], got[9 * len(got) // 10]
            print(f"augment {name:<8} cache warm, DTD: {1 / median:5.1f} samples/s "
                  f"(median {1e3 * median:.2f} ms/sample, 10-90%: {1e3 * low:.2f}-{1e3 * high:.2f} ms; "
                  f"{len(got)} samples)", flush=True)
        pipeline_times.sort()
        print(f"of which the pipeline's call (image and foreground): median "
              f"{1e3 * pipeline_times[len(pipeline_times) // 2]:.2f} ms/sample", flush=True)
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for item in items:
                datasets[Path(args.pipeline).stem][item]
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


STARTUP_CHILD = """
import sys, time
from urd_lightning.data.synthesis import DTDTextures
start = time.perf_counter()
DTDTextures(sys.argv[1], cache_dir=sys.argv[2])
print(time.perf_counter() - start)
"""


def write_dtd_like(root: Path, count: int) -> int:
    """``count`` JPEGs (640×480, ~105 KB) in 47 class folders; returns the total bytes.

    One image is encoded per class; each file is that JPEG with its own comment segment after the start marker, so
    every file has different bytes (a different digest) without encoding 5,640 images.
    """
    rng = np.random.default_rng(0)
    total = 0
    bases = []
    for k in range(47):  # DTD's 47 classes
        image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 1.2)
        bases.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        (root / "images" / f"class{k:02d}").mkdir(parents=True)
    for i in range(count):
        base = bases[i % 47]
        comment = f"urd bench file {i}".encode()
        data = base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]
        (root / "images" / f"class{i % 47:02d}" / f"{i:05d}.jpg").write_bytes(data)
        total += len(data)
    return total


def evict(root: Path) -> None:
    """Drop the tree's files (only these) from the page cache, so the next read comes from the disk (Linux)."""
    for path in root.rglob("*.jpg"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_startup(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        root, cache = Path(tmp) / "dtd", Path(tmp) / "cache"
        start = time.perf_counter()
        total = write_dtd_like(root, args.dtd_files)
        print(f"wrote {args.dtd_files} JPEGs, {total / 1e6:.0f} MB, in {time.perf_counter() - start:.0f} s")
        time.sleep(2.5)  # real DTD files are old; files younger than digests.RACY_NS are never remembered

        def startup(from_disk: bool) -> float:
            if from_disk:
                evict(root)
            done = subprocess.run([sys.executable, "-c", STARTUP_CHILD, str(root), str(cache)], check=True,
                                  capture_output=True, text=True)
            return float(done.stdout.strip().splitlines()[-1])

        for from_disk in (False, True):
            shutil.rmtree(cache, ignore_errors=True)  # no memo: the first run on this cache folder
            cold = startup(from_disk)
            warm = sorted(startup(from_disk) for _ in range(args.repeats))
            memo = cache / "file-digests.json"
            size = f"{memo.stat().st_size / 1e3:.0f} KB" if memo.is_file() else "none (code without the memo)"
            where = "files read from disk (evicted from the page cache)" if from_disk else "page cache warm"
            print(f"start-up, DTD-like tree ({args.dtd_files} files, {total / 1e6:.0f} MB, {where}), fresh process "
                  f"each: cold {cold:.2f} s; warm median {warm[len(warm) // 2]:.2f} s (min {warm[0]:.2f}, max "
                  f"{warm[-1]:.2f}, {args.repeats} runs); digest memo: {size}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="training images (900² PNG)")
    parser.add_argument("--dtd", type=int, default=200, help="fake DTD images (640×480 JPEG)")
    parser.add_argument("--samples", type=int, default=120, help="training items timed per setting")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--profile", action="store_true", help="cProfile the last setting of each texture source")
    parser.add_argument("--resize-only", action="store_true", help="only compare the resize methods")
    parser.add_argument("--startup", action="store_true", help="only time the start-up hashing of a DTD-like tree")
    parser.add_argument("--dtd-files", type=int, default=5640, help="files of the DTD-like tree (--startup)")
    parser.add_argument("--repeats", type=int, default=3, help="warm start-ups timed (--startup)")
    parser.add_argument("--augment", action="store_true", help="only time data.augment: none, flips, a pipeline")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timings of each setting (--augment)")
    parser.add_argument("--pipeline", default=str(Path(__file__).resolve().parents[1] / "configs" / "augment" /
                                                  "camera.yaml"), help="the pipeline --augment times")
    args = parser.parse_args()
    if args.startup:
        bench_startup(args)
        return
    cv2.setNumThreads(1)  # one loader worker (data/workers.py)
    torch.set_num_threads(1)
    if args.augment:
        bench_augment(args)
        return
    compare_resize(args.size)
    if not args.resize_only:
        bench_pipeline(args)


if __name__ == "__main__":
    main()
