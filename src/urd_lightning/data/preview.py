"""What the network will see: a panel of training samples after augmentation and synthesis.

Written by ``data check --show-augment``, so that a pipeline can be judged before a run is spent on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from urd_lightning.data.dataset import AnomalyDataset
from urd_lightning.files import write_via

COLUMNS = ("training image", "augmented", "foreground", "synthetic anomaly", "anomaly mask")


def augment_panel(dataset: AnomalyDataset, path: str | Path, count: int = 6, epoch: int = 0) -> Path:
    """Write ``count`` training samples of ``epoch`` (spread over the dataset) as one PNG; returns its path.

    Each row is one sample exactly as training makes it (``AnomalyDataset.train_arrays``): the image at model size,
    the same image after ``data.augment``, its foreground mask moved with it (white: where anomalies may go), the
    synthetic anomaly and its mask.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = np.unique(np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int))
    fig, axes = plt.subplots(len(indices), len(COLUMNS), figsize=(2.2 * len(COLUMNS), 2.2 * len(indices)),
                             squeeze=False)
    for row, index in zip(axes, indices.tolist(), strict=True):
        arrays = dataset.train_arrays(epoch, index)
        foreground = arrays["foreground"]
        if foreground is None:  # no foreground mask: anomalies may go anywhere
            foreground = np.ones(arrays["aug_mask"].shape, np.float32)
        shown = (arrays["source"], arrays["image"], foreground, arrays["aug_image"], arrays["aug_mask"])
        for ax, picture in zip(row, shown, strict=True):
            if picture.ndim == 2:
                ax.imshow(picture > 0, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(picture, 0, 255 if picture.dtype == np.uint8 else 1))
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"#{index}", fontsize=8)
    for ax, title in zip(axes[0], COLUMNS, strict=True):
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"training samples, epoch {epoch} (seed {dataset.seed}): augmentation, then synthesis", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path
