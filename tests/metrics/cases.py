"""Deterministic metric test cases covering the edge cases the metrics must get right."""

import numpy as np


def edge_case_data(seed: int = 0, n: int = 8, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Maps with ties, normal-only images, diagonal-touching and single-pixel regions, scores outside [0, 1]."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0.5, 0.8, size=(n, size, size)).astype(np.float32)
    maps[::2] = np.round(maps[::2] * 4) / 4  # heavy ties in every other image
    masks = np.zeros((n, size, size), bool)
    masks[1, 3:8, 4:9] = True
    masks[1, 10, 10] = masks[1, 11, 11] = masks[1, 12, 12] = True  # one region via diagonal contacts only
    masks[1, 20, 2] = True  # single-pixel region
    masks[3, 5:20, 5:7] = True
    masks[4] = rng.random((size, size)) < 0.06  # many tiny regions, some diagonal
    masks[6, 0, 0] = True  # single pixel in the corner
    maps[masks] += 1.0
    return maps, masks


def one_anomalous_image(seed: int = 1, size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.random((3, size, size)).astype(np.float32) * 3 - 1
    masks = np.zeros((3, size, size), bool)
    masks[2, 4:9, 6:12] = True
    maps[masks] += 0.7
    return maps, masks
