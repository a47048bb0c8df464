"""The configuration: schema, config files, loading with overrides, value ranges, the texture choice.

- ``schema.py``: every key, its type and default (``configs/default.yaml`` carries each key's one-line description).
- ``files.py``: where config files come from (the shipped ones, a user's ``config_dir=`` folder on top).
- ``load.py``: ``load_config(argv)``, the one place the YAML layers and the command line are merged and unpacked.
- ``ranges.py``: the allowed values of numeric and trainer keys, checked at load.
- ``textures.py``: which anomaly textures a run uses (DTD or procedural), resolved at load.

The layers below (``data``, ``models``) receive resolved values and never read a config file themselves.
"""

from urd_lightning.config.files import CONFIG_DIR
from urd_lightning.config.load import load_config, print_config_main, read_command_line, run_name, to_yaml
from urd_lightning.config.schema import Config

__all__ = ["CONFIG_DIR", "Config", "load_config", "print_config_main", "read_command_line", "run_name", "to_yaml"]
