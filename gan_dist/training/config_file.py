"""`--config FILE`: option values from a YAML or JSON file (a run's args.json works); command-line flags win.

    python -m gan_dist.train --config configs/modern-digits.yaml --output_dir runs/again
    python -m gan_dist.train --config runs/demo/args.json --output_dir runs/demo-again   # repeat a run

Keys are the flags' names without dashes. Unknown keys and values of the wrong type are
refused by name, before any work starts.
"""
import argparse
import json
from pathlib import Path

import yaml

# a run's args.json names the file it was read from, and records how its batch split (derived, not an option)
IGNORED = {"config", "batch_split"}


def read_config(path):
    """The file's mapping of option names to values; ValueError naming the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror})") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({e})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got {type(values).__name__}")
    return {k: v for k, v in values.items() if k not in IGNORED}


def _fits(action, value):
    if value is None:
        return True
    if action.choices is not None and not isinstance(value, list):
        return value in action.choices
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        return isinstance(value, bool)
    if action.type is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if action.type is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return not isinstance(value, dict)


def apply_config(parser, path):
    """Make the file's values the parser's defaults (so explicit flags still win); returns them."""
    values = read_config(path)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)} (keys are flag names without --)")
    for name, value in values.items():
        if not _fits(actions[name], value):
            parser.error(f"--config {path}: {name}: {value!r} is not a valid value for --{name}")
    parser.set_defaults(**values)
    return values
