"""One dataset class for every benchmark, and the samplers that make batches reproducible and DDP-exact.

Batch keys follow ``docs/design.md`` (data):
- train: ``image``, ``aug_image`` (3, H, W) ImageNet-normalised, ``aug_mask`` (1, H, W) {0, 1}, ``index``;
- eval: ``image``, ``gt_mask`` (1, H, W) {0, 1}, ``gt_label``, ``image_path``, ``defect_type``, ``index``.
Synthesis is seeded by (seed, epoch, sample index) only, never by worker id or batch order: the training sampler
yields ``(epoch, index)`` pairs so that the epoch reaches the workers even when they persist between epochs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from urd_lightning.config.augment import FLIPS, Pipeline, resolve_augment
from urd_lightning.data.benchmarks import Sample
from urd_lightning.data.cache import PixelCache, content_digest
from urd_lightning.data.synthesis import DTDTextures, ProceduralTextures, synthesize
from urd_lightning.data.transforms import Resizer, normalize, read_mask, read_rgb


class AnomalyDataset(Dataset):
    """Samples of one split as model-ready tensors.

    Args:
        samples: the split's files (``benchmarks.index``).
        image_size: model input size (square).
        train: training items (with a synthetic anomaly) or evaluation items (with ground truth).
        source: anomaly texture source; None disables synthesis (RD4AD: ``aug_image`` = ``image``, empty mask).
        foregrounds: per-sample foreground masks at ``image_size`` (None entries: whole image).
        seed: base seed of the synthesis.
        augment: ``False`` (the authors augment no normal image), ``"flips"`` (``True``: random horizontal and
            vertical flips) or an albumentations pipeline (``config/augment.py``), applied to the training image at
            model size, and to its foreground mask, before synthesis; test images are never augmented.
        resize: ``pil`` (the authors' Pillow bilinear) or ``cv2`` (see ``transforms``), for images and masks.
        pixel_cache_dir: where training images are cached once decoded and resized (``data/cache.py``), shared by
            the loader workers; None decodes every image at every epoch. Evaluation images are not cached.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, train: bool,
                 source: DTDTextures | ProceduralTextures | None = None,
                 foregrounds: Sequence[np.ndarray | None] | None = None, seed: int = 111,
                 augment: bool | str | dict[str, Any] = False, resize: str = "pil",
                 pixel_cache_dir: str | None = None) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.train = train
        self.source = source
        self.foregrounds = list(foregrounds) if foregrounds is not None else [None] * len(self.samples)
        self.seed = seed
        self.augment = resolve_augment(augment) if train else False
        self.pipeline = Pipeline(self.augment, image_size) if isinstance(self.augment, dict) else None
        self.resizer = Resizer(image_size, resize)
        self.cache: PixelCache | None = None
        if train and pixel_cache_dir and self.samples:
            # The digests are shared with the foreground masks (one read per image per run) and memoised on disk.
            key = f"train|{content_digest([s.image_path for s in self.samples], pixel_cache_dir)}|{resize}"
            self.cache = PixelCache(pixel_cache_dir, "train", key, len(self.samples), image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of one sample in one epoch: a pure function of (seed, epoch, index)."""
        return np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        if self.train:
            return self._train_item(epoch, index)
        return self._eval_item(index, self.samples[index])

    def _load(self, sample: Sample) -> np.ndarray:
        return self.resizer(read_rgb(sample.image_path))[0]

    def train_arrays(self, epoch: int, index: int) -> dict[str, np.ndarray | None]:
        """One training sample before normalisation (what ``__getitem__`` normalises; the augmentation panel shows it).

        Returns ``image`` and ``aug_image`` (S, S, 3) float32 in [0, 1], ``aug_mask`` (S, S) {0, 1}, the
        ``foreground`` (S, S) the anomaly was kept inside (None: everywhere), and the ``source`` image (S, S, 3) uint8
        before augmentation.
        """
        sample = self.samples[index]
        image = source = self._load(sample) if self.cache is None else self.cache.get(index, lambda: self._load(sample))
        foreground = self.foregrounds[index]
        if self.pipeline is not None:  # after the cached decode+resize, before synthesis: the anomaly stays exact
            image, foreground = self.pipeline(np.array(image), foreground, self.seed, epoch, index)
        image01 = image.astype(np.float32) / 255.0
        rng = self.rng(epoch, index)
        if self.augment == FLIPS:
            if rng.random() < 0.5:
                image01 = image01[:, ::-1]
                foreground = foreground[:, ::-1] if foreground is not None else None
            if rng.random() < 0.5:
                image01 = image01[::-1]
                foreground = foreground[::-1] if foreground is not None else None
            image01 = np.ascontiguousarray(image01)
        if self.source is not None:
            aug01, mask = synthesize(image01, self.source, rng, foreground)
        else:
            aug01, mask = image01, np.zeros(image01.shape[:2], np.float32)
        return {"image": image01, "aug_image": aug01, "aug_mask": mask, "foreground": foreground, "source": source}

    def _train_item(self, epoch: int, index: int) -> dict[str, Any]:
        arrays = self.train_arrays(epoch, index)
        return {
            "image": normalize(arrays["image"]),
            "aug_image": normalize(arrays["aug_image"]),
            "aug_mask": torch.from_numpy(np.ascontiguousarray(arrays["aug_mask"]))[None],
            "index": index,
        }

    def _eval_item(self, index: int, sample: Sample) -> dict[str, Any]:
        rgb = read_rgb(sample.image_path)
        if sample.mask_path is not None:
            mask_src = read_mask(sample.mask_path)
        else:
            mask_src = np.zeros(rgb.shape[:2], np.uint8)
        image, mask = self.resizer(rgb, mask_src)
        assert mask is not None
        return {
            "image": normalize(image.astype(np.float32) / 255.0),
            "gt_mask": torch.from_numpy(mask)[None],
            "gt_label": sample.label,
            "image_path": sample.image_path,
            "defect_type": sample.defect_type,
            "index": index,
        }


class TrainSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(epoch, index)`` pairs; under DDP rank r takes every world-th index of a shared permutation.

    Same semantics as ``torch.utils.data.DistributedSampler`` (seed + epoch shuffle, padding by repetition so that
    every rank runs the same number of steps, ``set_epoch``), which Lightning calls at each epoch start.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.num_samples = -(-size // world_size)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation (and the synthesis seeds) of ``epoch``."""
        self.epoch = epoch

    def skip_next(self, samples: int) -> None:
        """Leave out the first ``samples`` of the next pass only: a mid-epoch resume continues the epoch's order."""
        self.skip = samples

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.world_size
        order = (order * (-(-total // max(len(order), 1))))[:total]  # pad: equal step counts on every rank
        skip, self.skip = self.skip, 0
        return iter([(self.epoch, i) for i in order[self.rank:total:self.world_size][skip:]])


class ShardSampler(Sampler[int]):
    """Evaluation indices of one rank, ``rank, rank + world, ...``: no padding, so no sample is counted twice."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
