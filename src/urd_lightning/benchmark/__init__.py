"""Benchmarking: every category of a benchmark, resumable, and the results table beside the paper's.

- ``runner.py``: the ``benchmark`` command (one training process per category, GPUs, SLURM array tasks);
- ``launchers.py``: how those processes run: one after the other, or ``--jobs N`` at once through submitit;
- ``slurm.py``: ``--slurm``: the categories as one SLURM job array through submitit, requeued when cut;
- ``records.py``: what a results folder holds (one ``RunRecord`` per category run);
- ``report.py``: the ``report`` command (CSV and the markdown table beside the paper's means);
- ``plots.py``: per-category bars and ROC/PRO curve sheets;
- ``paper.py``: the URD paper's published means and why they are not like-for-like.

Sits on top: may import ``training`` and everything below it; nothing imports ``benchmark``.
"""
