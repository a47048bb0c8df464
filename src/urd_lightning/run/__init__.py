"""The run: what identifies it, the folder that holds it, and the record its checkpoints carry.

- ``identity.py``: the one list of keys that say how or where a run executes (``EXECUTION_KEYS``), the run name,
  and the safe-name rule for everything that becomes a folder;
- ``folder.py``: ``RunFolder``, the only code that knows the run folder's layout; its lock, its one store of
  training state (``train_state.json``), and the rule for reusing a run name;
- ``extras.py``: ``CheckpointExtras``, the one writer and reader of a checkpoint's ``urd_lightning`` record.

Imported by ``config``, ``training``, ``deploy`` and ``benchmark``; imports only ``errors``, ``files`` and omegaconf
(no torch, no Lightning), so ``deploy`` stays free of Lightning.
"""
