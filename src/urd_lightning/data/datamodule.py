"""``AnomalyDataModule``: every benchmark through one LightningDataModule (``docs/design.md``, data).

Benchmark-specific code lives only in the index functions of ``benchmarks.py``; per-category settings (foreground
method, iteration budget) live in ``configs/data/<benchmark>.yaml`` and arrive here resolved by ``load_config``: the
data layer never reads a config file. The validation loader is the TEST set, used for
periodic evaluation as the authors do (docs/method.md, "Test-set selection"); there is no separate validation split.

Loaders are built here and only here, including under DDP (the trainer runs with ``use_distributed_sampler=False``):
training uses ``TrainSampler`` (seed + epoch shuffle, equal step counts per rank), evaluation uses ``ShardSampler``
(rank r gets r, r + world, ...; no padding, so metrics count every test image exactly once).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from urd_lightning.config.textures import DEFAULT_DTD_ROOT
from urd_lightning.data.benchmarks import BENCHMARKS, index
from urd_lightning.data.check import check_dataset, log_warnings, raise_on_problems
from urd_lightning.data.dataset import AnomalyDataset, ShardSampler, TrainSampler
from urd_lightning.data.demo import ensure_demo
from urd_lightning.data.foreground import METHODS, foreground_masks
from urd_lightning.data.synthesis import make_texture_source
from urd_lightning.data.transforms import check_resize
from urd_lightning.data.workers import init_worker, worker_context
from urd_lightning.errors import ConfigError

log = logging.getLogger(__name__)


TEXTURE_SOURCES = ("dtd", "procedural", "none")  # resolved; ``auto`` is resolved by load_config (config/textures.py)


def _resolved(key: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; else a ConfigError: the data layer takes resolved values only."""
    if value not in allowed:
        raise ConfigError(f"data.{key}={value!r}: the data module takes {', '.join(allowed)} (load_config resolves "
                          f"'auto' per dataset and category, from the dataset file)")
    return value


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class AnomalyDataModule(L.LightningDataModule):
    """Train / validation (= test) / test loaders for one (benchmark, category).

    Args:
        benchmark: ``mvtec``, ``visa``, ``btad``, ``mpdd``, ``folder`` or ``demo``.
        root: dataset root.
        category: category name.
        image_size: square model input size (the authors: 256).
        train_batch_size: training batch size per process (the authors: 16).
        eval_batch_size: evaluation batch size per process.
        num_workers: loader processes.
        synthesis: make synthetic anomalies for training (False for RD4AD: ``aug_image`` is the image).
        textures: anomaly source, resolved (``config/textures.py``): ``dtd`` (the paper's), ``procedural`` (built-in,
            differs from the paper) or ``none``; ``synthesis=False`` means none whatever this says.
        dtd_root: DTD folder for anomaly textures (None: ``datasets/dtd``); used only with ``textures="dtd"``.
        foreground: ``none``, ``otsu`` or ``grabcut`` (``load_config`` resolves ``auto`` from the dataset file).
        seed: seed of the shuffle and of the synthesis.
        cache_dir: where foreground masks are cached.
        pixel_cache_dir: where decoded, resized training images and textures are cached (memory-mapped, shared by
            the loader workers and ranks, ``data/cache.py``); None decodes them at every use.
        augment: ``false`` (the authors augment no normal image), ``flips`` (random horizontal and vertical flips;
            ``true`` says the same) or an albumentations pipeline: a file ``A.save`` wrote, a name in
            ``configs/augment/``, or the serialised pipeline itself (``config/augment.py``). Training images only.
        resize: ``pil`` (the authors' Pillow bilinear, default) or ``cv2`` (faster OpenCV), for images, masks and
            textures; foreground masks keep the authors' own OpenCV resize whatever this says.
        check: check the data (as ``data check``) in ``setup`` and stop with every problem found.
        normal_dir, abnormal_dir, mask_dir, normal_test_dir, normal_split_ratio: the folder benchmark's layout,
            relative to ``root`` (see ``benchmarks.index_folder``).
    """

    def __init__(self, benchmark: str, root: str, category: str,
                 image_size: int = 256, train_batch_size: int = 16, eval_batch_size: int = 16, num_workers: int = 4,
                 synthesis: bool = True, textures: str = "procedural", dtd_root: str | None = None,
                 foreground: str = "none", seed: int = 111,
                 cache_dir: str = ".cache/urd/foreground", augment: Any = False, check: bool = True,
                 resize: str = "pil", pixel_cache_dir: str | None = None,
                 normal_dir: str = "good", abnormal_dir: str | None = None, mask_dir: str | None = None,
                 normal_test_dir: str | None = None, normal_split_ratio: float = 0.2) -> None:
        super().__init__()
        if benchmark not in BENCHMARKS:
            raise ConfigError(f"data.benchmark={benchmark!r}: use one of {', '.join(BENCHMARKS)}")
        self.benchmark, self.root, self.category = benchmark, str(root), str(category)
        self.image_size, self.seed = image_size, seed
        self.train_batch_size, self.eval_batch_size, self.num_workers = train_batch_size, eval_batch_size, num_workers
        self.synthesis, self.augment, self.check = synthesis, augment, check
        self.textures = _resolved("textures", textures, TEXTURE_SOURCES) if synthesis else "none"
        self.dtd_root = str(dtd_root or DEFAULT_DTD_ROOT) if self.textures == "dtd" else None
        self.foreground = _resolved("foreground", foreground, METHODS)
        self.resize = check_resize(resize)
        self.cache_dir, self.pixel_cache_dir = cache_dir, pixel_cache_dir
        self.folder_options: dict[str, Any] = {}
        if benchmark == "folder":
            self.folder_options = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir, "mask_dir": mask_dir,
                                   "normal_test_dir": normal_test_dir, "normal_split_ratio": normal_split_ratio}
        self.train_data: AnomalyDataset | None = None
        self.test_data: AnomalyDataset | None = None
        self._train_sampler: TrainSampler | None = None
        self._epoch = 0

    def prepare_data(self) -> None:
        """Generate the embedded demo dataset when it is missing or outdated (no download ever happens here)."""
        if self.benchmark == "demo":
            ensure_demo(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Index and check the data, compute foreground masks, build the datasets."""
        if self.test_data is None:
            if self.benchmark == "demo":
                self.prepare_data()  # idempotent: covers direct use without a Trainer
            if self.check:
                report = check_dataset(self.benchmark, self.root, self.category, image_size=self.image_size,
                                       resize=self.resize, **self.folder_options)
                log_warnings(report)  # once, before a problem stops the run
                raise_on_problems(report)
            test = index(self.benchmark, self.root, self.category, "test", **self.folder_options)
            self.test_data = AnomalyDataset(test, self.image_size, train=False, resize=self.resize)
        if self.train_data is None and stage in (None, "fit"):  # test/predict runs skip the (slow) foregrounds
            train = index(self.benchmark, self.root, self.category, "train", **self.folder_options)
            source = None  # dtd_root is None unless data.textures resolved to dtd: then procedural textures
            if self.synthesis:
                source = make_texture_source(self.dtd_root, resize=self.resize, cache_dir=self.pixel_cache_dir)
            foregrounds = None
            if self.synthesis and self.foreground != "none":
                foregrounds = foreground_masks([s.image_path for s in train], self.foreground, self.image_size,
                                               self.cache_dir, workers=self.num_workers)
            self.train_data = AnomalyDataset(train, self.image_size, train=True, source=source,
                                             foregrounds=foregrounds, seed=self.seed, augment=self.augment,
                                             resize=self.resize, pixel_cache_dir=self.pixel_cache_dir)
            log.info("%s/%s: %d train, %d test images (foreground: %s)", self.benchmark, self.category, len(train),
                     len(self.test_data), self.foreground)

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle and synthesis of ``epoch`` (the LightningModule calls it at each train epoch start)."""
        self._epoch = epoch
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(epoch)

    def _position(self, sampler: TrainSampler) -> tuple[int, int]:
        """The epoch and the batches already trained of it where this fit continues (``(epoch, 0)`` on a fresh start).

        Called when the training loader is built: Lightning builds its iterator before ``on_train_start`` and before
        it sets the sampler's epoch, and a loader with workers draws its first indices from the sampler right then.
        So the position of a resumed run must be in the sampler already: the epoch of the checkpoint's iteration and,
        for a checkpoint that cut an epoch, the batches of it that were trained (Lightning restarts a plain DataLoader
        from the epoch's first batch). One batch is one iteration and every epoch has the same number of batches, so
        both follow from the iteration alone; the order and the synthesis depend only on seed, epoch and sample.
        """
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        iteration = getattr(module, "iteration", None)
        if not isinstance(iteration, int) or iteration <= 0:
            return self._epoch, 0
        batches = max(1, -(-len(sampler) // self.train_batch_size))  # drop_last=False: the last batch counts
        return divmod(iteration, batches)

    def _loader(self, dataset: AnomalyDataset | None, batch_size: int, sampler: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        workers = self.num_workers > 0
        # Workers come from a forkserver, never forked from this process (see data/workers.py: a fork after OpenCV
        # used its thread pool here hangs the worker).
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), drop_last=False,  # authors keep the last batch
                          persistent_workers=workers, worker_init_fn=init_worker if workers else None,
                          multiprocessing_context=worker_context() if workers else None)

    def train_dataloader(self) -> DataLoader:
        """Training batches: ``image``, ``aug_image``, ``aug_mask``, ``index``."""
        if self.train_data is None:
            self.setup("fit")
        assert self.train_data is not None
        rank, world = _dist_rank_world()
        sampler = TrainSampler(len(self.train_data), self.seed, shuffle=True, rank=rank, world_size=world)
        epoch, done = self._position(sampler)
        sampler.set_epoch(epoch)
        sampler.skip_next(done * self.train_batch_size)
        self._epoch, self._train_sampler = epoch, sampler
        return self._loader(self.train_data, self.train_batch_size, self._train_sampler)

    def test_dataloader(self) -> DataLoader:
        """Test batches: ``image``, ``gt_mask``, ``gt_label``, ``image_path``, ``defect_type``, ``index``."""
        if self.test_data is None:
            self.setup("test")
        assert self.test_data is not None
        rank, world = _dist_rank_world()
        return self._loader(self.test_data, self.eval_batch_size, ShardSampler(len(self.test_data), rank, world))

    def val_dataloader(self) -> DataLoader:
        """The TEST set, for periodic evaluation (the authors evaluate on test after every epoch)."""
        return self.test_dataloader()
