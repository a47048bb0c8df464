"""URD network, losses and anomaly maps: plain torch + timm (no Lightning import)."""

from urd_lightning.models.anomaly_map import GaussianBlur2d, anomaly_map
from urd_lightning.models.authors import load_authors_checkpoint, save_authors_checkpoint
from urd_lightning.models.losses import student_loss, teacher_loss
from urd_lightning.models.urd import URD, URDOutput

__all__ = [
    "URD",
    "URDOutput",
    "GaussianBlur2d",
    "anomaly_map",
    "load_authors_checkpoint",
    "save_authors_checkpoint",
    "student_loss",
    "teacher_loss",
]
