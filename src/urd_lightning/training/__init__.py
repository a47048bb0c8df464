"""Training: the LightningModule, ``train(cfg)``, evaluation of a checkpoint, callbacks, loggers, the results writer.

- ``module.py``: ``URDModule`` — the authors' two-optimizer training step, evaluation, metric logging;
- ``train.py``: ``train(cfg) -> metrics`` and the ``train`` command (every way of training runs it);
- ``evaluate.py``: the ``test`` command (a checkpoint on its test set);
- ``builders.py``: config -> Trainer arguments, module and datamodule (the one place config is unpacked);
- ``callbacks.py``, ``loggers.py``, ``results.py``: progress, checkpoints, W&B/CSV, ``metrics.json`` and summary.

May import ``models``, ``data``, ``metrics``, ``config``, ``errors`` and Lightning; never ``deploy`` or
``benchmark``.
"""
