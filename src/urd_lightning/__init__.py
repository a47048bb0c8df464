"""urd-lightning: URD (reverse distillation with an expert, AAAI 2025) in PyTorch Lightning."""

__version__ = "0.1.0"
