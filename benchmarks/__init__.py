"""Speed and quality benchmarks, run from a source checkout: `python -m benchmarks --help`."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
