"""One command-line grammar for every command: ``urd <command> [value ...] key=value ...``.

Each command declares its own keys as :class:`Option` (type, default, one-line help) in a :class:`Command`; commands
that build a config (``train``, ``test``, ``print-config``, ``benchmark``) also take every config key, whose type and
default come from the schema (``schema.py``) and whose description is its comment in ``configs/default.yaml`` (one
text for the file and for ``--help``). :func:`parse_command_line` is the one parser: it reads

- ``key=value`` (the form W&B's ``${args_no_hyphens}`` gives), for a command key or a config key;
- a bare word, for the command's positional keys in order (``data download mvtec``, ``report results/``);
- ``--key value``, ``--key=value`` and ``--flag`` (a bool key set true), the flags users already type, with ``-``
  for ``_`` (``--slurm-partition gpu`` is ``slurm_partition=gpu``), plus each key's named aliases (``--no-plots``).

An unknown key, flag or value is one line naming it, with the closest valid keys. Deliberately free of Lightning and
torch: ``deploy`` parses its arguments here too.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from urd_lightning.errors import ConfigError, URDError

TRUE, FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})
HELP_FLAGS = frozenset({"-h", "--help"})


@dataclass(frozen=True)
class Option:
    """One key of a command (not a config key).

    Args:
        name: the key, as in ``name=value``.
        kind: ``str``, ``int``, ``float``, ``bool`` or ``list`` (repeatable: each use adds one item).
        default: the value when the key is not given.
        help: one line for ``--help``.
        positional: a bare word fills this key (positional keys are filled in their order).
        required: the command stops without it.
        choices: the allowed values, if restricted.
        aliases: other flags for this key; for a bool, a ``--no-...`` alias sets it false.
    """

    name: str
    kind: type = str
    default: Any = None
    help: str = ""
    positional: bool = False
    required: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """A command's grammar: its keys, whether it takes config keys, and the lines of its ``--help``."""

    name: str
    summary: str
    options: tuple[Option, ...] = ()
    config: bool = False
    examples: tuple[str, ...] = ()

    def option(self, name: str) -> Option | None:
        """The option called ``name``, else None."""
        return next((o for o in self.options if o.name == name), None)


@dataclass
class Arguments:
    """What :func:`parse_command_line` read: the command's keys, and the config overrides in the order given."""

    values: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    given: set[str] = field(default_factory=set)  # every key named on the command line (command or config)


class HelpRequested(URDError):
    """``-h``/``--help``: the command's help text, printed instead of running it (exit 0)."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean a, b?`` for the valid names closest to a mistyped ``name`` (empty when none is close)."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


def convert(option: Option, raw: str, command: str) -> Any:
    """``raw`` as the option's type; ConfigError naming the key and the value otherwise."""
    if raw.lower() in {"null", "none"} and option.default is None and not option.required:
        return None
    try:
        if option.kind is bool:
            if raw.lower() not in TRUE | FALSE:
                raise ValueError(raw)
            value: Any = raw.lower() in TRUE
        elif option.kind is list:
            value = raw
        else:
            value = option.kind(raw)
    except ValueError:
        kind = "true or false" if option.kind is bool else f"a valid {option.kind.__name__}"
        raise ConfigError(f"{command}: {option.name}={raw!r} is not {kind}") from None
    if option.choices and value not in option.choices:
        raise ConfigError(f"{command}: {option.name}={value!r}; choose one of: {', '.join(option.choices)}")
    return value


def _flag(command: Command, token: str) -> tuple[Option, str | None, bool]:
    """The option a ``--flag[=value]`` names, its inline value, and whether the flag negates a bool."""
    flag, sep, inline = token.partition("=")
    option = command.option(flag.lstrip("-").replace("-", "_"))
    negated = False
    if option is None:
        option = next((o for o in command.options if flag in o.aliases), None)
        negated = option is not None and option.kind is bool and flag.startswith("--no-")
    if option is None:
        flags = [f"--{o.name.replace('_', '-')}" for o in command.options] + [a for o in command.options
                                                                               for a in o.aliases]
        raise ConfigError(f"{command.name}: unknown option {flag!r}.{closest(flag, flags)} "
                          f"`urd {command.name} --help` lists the keys")
    return option, (inline if sep else None), negated


def parse_command_line(command: Command, argv: Sequence[str], config_keys: Iterable[str] = (),
                       required: bool = True) -> Arguments:
    """Read ``argv`` by the one grammar (module docstring) for ``command``.

    Args:
        command: the command's grammar.
        argv: the arguments after the command's name.
        config_keys: the valid config keys (dotted) when the command takes them; their values stay text for
            ``load_config``, which types them by the schema.
        required: stop when a required key is missing (not while showing the help).

    Returns:
        Every option of the command (given, else its default; lists collect each use) and the config overrides.

    Raises:
        HelpRequested: ``-h`` or ``--help`` anywhere.
        ConfigError: an unknown key or flag (with the closest valid ones), a bad value, a missing required key.
    """
    if HELP_FLAGS & set(argv):
        raise HelpRequested(command.name)
    ordered = list(config_keys) if command.config else []  # the schema's order: the first key of a section leads
    valid_config = set(ordered)
    values = {o.name: ([] if o.kind is list else o.default) for o in command.options}
    parsed = Arguments(values)
    positionals = [o for o in command.options if o.positional]
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if token.startswith("-") and len(token) > 1 and not token[1].isdigit():
            option, raw, negated = _flag(command, token)
            if raw is None:
                if option.kind is bool:
                    raw = "false" if negated else "true"
                elif not tokens:
                    raise ConfigError(f"{command.name}: {token} needs a value ({option.name}=...)")
                else:
                    raw = tokens.pop(0)
        elif "=" in token:
            key, _, raw = token.partition("=")
            option = command.option(key)
            if option is None:
                inside = [k for k in ordered if k.startswith(key + ".")]
                if inside:
                    raise ConfigError(f"'{token}': {key} is a section of keys, not a value; set one of them, e.g. "
                                      f"{inside[0]}=... (`urd {command.name} --help` lists them)")
                if key not in valid_config:
                    raise ConfigError(f"unknown key '{key}' for {command.name}.{closest(key, [*values, *valid_config])}"
                                      f" `urd {command.name} --help` lists the keys")
                parsed.overrides.append(token)
                parsed.given.add(key)
                continue
        else:
            open_slots = [o for o in positionals if o.name not in parsed.given]
            if not open_slots:
                raise ConfigError(f"{command.name}: argument {token!r} is not of the form key=value "
                                  f"(e.g. {_example_key(command)}=...); `urd {command.name} --help` lists the keys")
            option, raw = open_slots[0], token
        value = convert(option, raw, command.name)
        if option.kind is list:
            values[option.name].append(value)
        else:
            values[option.name] = value
        parsed.given.add(option.name)
    missing = [o for o in command.options if required and o.required and values[o.name] in (None, [])]
    if missing:
        raise ConfigError(f"{command.name}: missing {', '.join(f'{o.name}=... ({o.help})' for o in missing)}; "
                          f"`urd {command.name} --help` lists the keys")
    return parsed


def _example_key(command: Command) -> str:
    return command.options[0].name if command.options else "data.category"


def _default_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != [] else "[]"


def help_text(command: Command, config_rows: Sequence[tuple[str, str, Any, str]] = ()) -> str:
    """``--help``: what the command does, its examples, then one line per key: name, type, default, description.

    Args:
        command: the command's grammar.
        config_rows: ``(key, type, default, description)`` of every config key, for commands that take them.
    """
    lines = [f"usage: urd {command.name} " + " ".join(
        [f"{o.name.upper()}" for o in command.options if o.positional] + ["[key=value ...]"]), "", command.summary]
    if command.examples:
        lines += ["", "examples:", *(f"  {example}" for example in command.examples)]
    rows = [(o.name, "list" if o.kind is list else o.kind.__name__,
             "[]" if o.kind is list else _default_text(o.default),
             o.help + (f" (one of: {', '.join(o.choices)})" if o.choices else "")
             + (f" [also {', '.join(o.aliases)}]" if o.aliases else "") + (" (required)" if o.required else ""))
            for o in command.options]
    if rows:
        lines += ["", f"{command.name} keys (key=value; --key value also works):"]
        lines += _table(rows)
    if config_rows:
        lines += ["", "config keys (default: the value for the arguments given, so `--help dataset=visa` shows VisA's; "
                      "descriptions: configs/default.yaml):"]
        lines += _table([(key, kind, _default_text(default), text) for key, kind, default, text in config_rows])
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[tuple[str, str, str, str]]) -> list[str]:
    width = max(len(r[0]) for r in rows) + 2
    kinds = max(len(r[1]) for r in rows) + 2
    defaults = min(max(len(r[2]) for r in rows), 24) + 2
    return [f"  {name:<{width}}{kind:<{kinds}}{default:<{defaults}}{text}".rstrip()
            for name, kind, default, text in rows]
