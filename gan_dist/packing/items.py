"""What a source yields to the packer: Item (an image and its label) or Skip (why not), and the options it reads."""
from dataclasses import dataclass
from typing import Iterable, NamedTuple


class PackError(Exception):
    """A problem with the input or options that the user has to fix."""


class Item(NamedTuple):
    name: str
    image: object
    label: int | None = None  # an index into the Source's `classes`


class Skip(NamedTuple):
    name: str
    reason: str  # "unreadable", "unsafe_path", "download_failed"


@dataclass
class SourceOptions:
    src: str | None = None
    sha256: str | None = None  # None: the published digest; "none": accept any content
    cache_dir: str | None = None
    version: str | None = None
    retries: int = 5
    progress: bool = False
    dataset: str | None = None  # hf: a Hub dataset name or a local path
    split: str = "train"
    image_column: str | None = None  # None: the dataset's only image column


@dataclass
class Source:
    items: Iterable
    info: dict
    classes: list | None = None  # the class names that Items' labels index, for sources with labels
