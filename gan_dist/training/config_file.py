"""`--config FILE`: option values from a YAML or JSON file (a run's args.json works); command-line flags win.

    python -m gan_dist.train --config configs/modern-digits.yaml --output_dir runs/again
    python -m gan_dist.train --config runs/demo/args.json --output_dir runs/demo-again   # repeat a run

Keys are the flags' names without dashes. Unknown keys and values of the wrong type are
refused by name, before any work starts; a value goes through the same parser as its flag.
YAML anchors and aliases are refused (a few hundred bytes of them expand to gigabytes), and
so are files above MAX_BYTES.
"""
import argparse
import json
from pathlib import Path

import yaml

# a run's args.json names the file it was read from, and records how its batch split and why its --size (derived,
# not options)
IGNORED = {"config", "batch_split", "size_reason"}
MAX_BYTES = 1 << 20


class _NoAliases(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing aliases ("billion laughs": nested aliases expand exponentially)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a --config file",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_config(path):
    """The file's mapping of option names to values; ValueError naming the problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_BYTES + 1).decode()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if len(text) > MAX_BYTES:
        raise ValueError(f"--config {path}: larger than {MAX_BYTES >> 20} MiB; not a config file")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        values = json.loads(text) if kind == "JSON" else yaml.load(text, Loader=_NoAliases)  # noqa: S506 (safe)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ValueError(f"--config {path}: not valid {kind} ({getattr(e, 'problem', None) or e}{where})") from None
    except RecursionError:
        raise ValueError(f"--config {path}: nested too deeply to be a config file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got {type(values).__name__}")
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise ValueError(f"--config {path}: keys must be option names, got {odd[0]!r}")
    return {k: v for k, v in values.items() if k not in IGNORED}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(action, value):
    """A config entry as its flag would give it: the flag's own type and choices; ValueError if it does not fit."""
    if value is None:
        if action.default is None:
            return None
        raise ValueError("null only fits options whose default is null")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if action.type is not None and action.type not in (int, float):  # B1,B2 or comma lists: the flag's parser
        if isinstance(value, list) and all(map(_number, value)):
            value = ",".join(map(str, value))
        elif _number(value):
            value = str(value)
    if action.type is int and isinstance(value, float) or isinstance(value, bool) and action.type is not None:
        raise ValueError(f"expected {action.type.__name__}")
    if action.type is not None and (isinstance(value, str) or _number(value)):
        try:
            value = action.type(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ValueError(str(e)) from None
    elif not isinstance(value, str):
        raise ValueError(f"expected {getattr(action.type, '__name__', 'a string')}, got {type(value).__name__}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    return value


def apply_config(parser, path):
    """Make the file's values the parser's defaults (so explicit flags still win); returns them."""
    values = read_config(path)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = [k if k.isprintable() else repr(k) for k in sorted(set(values) - set(actions))]
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)} (keys are flag names without --)")
    for name, value in values.items():
        try:
            values[name] = _value(actions[name], value)
        except ValueError as e:
            parser.error(f"--config {path}: {name}: {repr(value)[:80]} is not a valid value for --{name} ({e})")
    parser.set_defaults(**values)
    return values
