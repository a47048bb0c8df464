"""Which anomaly textures a run uses: DTD (the paper's source) or the built-in procedural ones.

Part of the bottom layer, ``config``, which resolves ``data.textures`` when it loads a config (so the recorded config
and a run's identity say which source was used); ``data`` reads DTD's layout from here. No heavy imports.
"""

from __future__ import annotations

from pathlib import Path

from urd_lightning.errors import ConfigError

DEFAULT_DTD_ROOT = "datasets/dtd"  # where `data download dtd` puts DTD; found there without data.dtd_root


def dtd_images_dir(root: str | Path) -> Path | None:
    """DTD's ``images/<class>/`` folder: ``root/images``, or ``root/dtd/images`` as the archive extracts; else None."""
    for candidate in (Path(root) / "images", Path(root) / "dtd" / "images"):
        if candidate.is_dir():
            return candidate
    return None


def resolve_textures(textures: str, dtd_root: str | None, synthesis: bool) -> tuple[str, str | None]:
    """The anomaly source a run uses: ``("dtd", root)``, ``("procedural", None)`` or ``("none", None)``.

    ``auto`` takes DTD from ``dtd_root`` when given, else from ``datasets/dtd`` when it holds DTD's images, else the
    procedural textures; ``dtd`` insists on DTD (the datamodule stops with the download command when it is missing).
    Resolved values map to themselves, so a recorded config resolves to the same source.
    """
    if not synthesis:
        return "none", None
    if textures == "none":
        raise ConfigError("data.textures=none needs data.synthesis=false; use auto, dtd or procedural")
    if textures == "procedural":
        return "procedural", None
    if textures == "dtd" or dtd_root:
        return "dtd", str(dtd_root or DEFAULT_DTD_ROOT)
    if dtd_images_dir(DEFAULT_DTD_ROOT) is not None:
        return "dtd", DEFAULT_DTD_ROOT
    return "procedural", None
