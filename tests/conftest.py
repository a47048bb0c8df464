"""Shared test set-up: offline, quiet, deterministic. Dataset fixtures live in tests/helpers and are registered here."""

import os

# Set before anything imports timm, wandb or albumentations.
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm otherwise retries the hub for ~48 s when offline
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
