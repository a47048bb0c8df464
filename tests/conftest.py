"""Shared test set-up: offline, quiet, deterministic. Dataset fixtures live in tests/helpers and are registered here."""

import os

# Set before anything imports timm or wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm otherwise retries the hub for ~48 s when offline
os.environ.setdefault("WANDB_MODE", "disabled")


# --- dataset fixtures (data side): tiny trees in every benchmark's real layout, written once per session ---
import pytest  # noqa: E402

from helpers import datasets as _fake  # noqa: E402


@pytest.fixture(scope="session")
def fake_roots(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """case name -> dataset root, one tree per ``helpers.datasets.CASES`` writer (shared roots written once)."""
    roots: dict = {}
    written: dict = {}
    for case, (writer, *_rest) in _fake.CASES.items():
        if writer not in written:
            written[writer] = writer(tmp_path_factory.mktemp(writer.__name__.removeprefix("write_")))
        roots[case] = written[writer]
    return roots


@pytest.fixture(scope="session")
def mvtec_root(fake_roots: dict):
    return fake_roots["mvtec"]


@pytest.fixture(scope="session")
def visa_root(fake_roots: dict):
    return fake_roots["visa"]


@pytest.fixture(scope="session")
def btad_root(fake_roots: dict):
    return fake_roots["btad"]


@pytest.fixture(scope="session")
def mpdd_root(fake_roots: dict):
    return fake_roots["mpdd"]


@pytest.fixture(scope="session")
def folder_root(fake_roots: dict):
    return fake_roots["folder"]


@pytest.fixture(autouse=True)
def _restore_urd_logger():
    """A training run configures the ``urd_lightning`` console logger (no propagation); undo it after each test so
    that ``caplog`` in a later test sees the messages whatever order the tests run in."""
    import logging

    logger = logging.getLogger("urd_lightning")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
