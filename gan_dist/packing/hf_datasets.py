"""Hugging Face datasets as a packing source: `python -m gan_dist.shard hf --dataset NAME_OR_PATH`.

NAME_OR_PATH is a Hub dataset (user/name), a local folder that `datasets.load_dataset` reads
(parquet files, an imagefolder), a .parquet file, or a folder written by `save_to_disk`.
The images reach the packer still encoded (the Image feature with decode=False), so its
worker processes decode them. `datasets` is optional (pip install 'gan-dist[hf]') and is
imported only when this source is used.

A dataset's files are untrusted: a row that names a file instead of holding its bytes is read
only if the file is a regular file inside the dataset's folder (for a Hub dataset: inside the
caches), else skipped as "unsafe_path"; a save_to_disk folder whose state.json names files
outside it is refused before `datasets` opens them.
"""
import json
from pathlib import Path

from gan_dist.packing.items import Item, PackError, Skip, Source
from gan_dist.safe_io import UnsafePath, confined, regular_file

SAVED_MARKERS = ("state.json", "dataset_dict.json")  # save_to_disk writes one of them
INSTALL = "pip install 'gan-dist[hf]'"


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise PackError(f"source 'hf' needs the datasets library: {INSTALL}") from None
    return datasets


def _load(datasets, opts):
    """(Dataset of the split, where it came from: "disk", "files" or "hub")."""
    path = Path(opts.dataset).expanduser()
    try:
        if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
            _check_saved(path, opts.dataset)
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if opts.split not in ds:
                    raise PackError(f"--split {opts.split}: {opts.dataset} has the splits {', '.join(ds)}")
                ds = ds[opts.split]
            return ds, "disk"
        if path.is_file():
            if path.suffix.lower() != ".parquet":
                raise PackError(f"--dataset {opts.dataset}: of single files only .parquet is read; "
                                "pass a folder for other formats")
            return datasets.load_dataset("parquet", data_files={opts.split: str(path)}, split=opts.split,
                                         cache_dir=opts.cache_dir), "files"
        origin = "files" if path.is_dir() else "hub"
        return datasets.load_dataset(str(path) if path.is_dir() else opts.dataset, split=opts.split,
                                     cache_dir=opts.cache_dir), origin
    except (OSError, ValueError) as e:  # not found, offline, unknown split: subclasses of these
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PackError(f"--dataset {opts.dataset} (split {opts.split}) could not be loaded: {reason}") from None


def _check_saved(path, name):
    """Raise PackError unless every file a save_to_disk folder's state.json (or its splits') names is inside it."""
    try:
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            for split in splits:
                _check_saved(confined(path, split, "split"), name)
            return
        for entry in json.loads((path / "state.json").read_text())["_data_files"]:
            regular_file(confined(path, entry["filename"], "data file"), [path])
    except UnsafePath as e:
        raise PackError(f"--dataset {name}: {e}; a save_to_disk folder only names files inside it") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PackError(f"--dataset {name}: not a readable save_to_disk folder ({type(e).__name__}: "
                        f"{str(e)[:100]})") from None


def _roots(datasets, opts, origin):
    """The folders a row's file may lie in: the dataset's own, or for a Hub dataset the caches."""
    if origin == "hub":
        from huggingface_hub import constants
        return [Path(opts.cache_dir or datasets.config.HF_DATASETS_CACHE), Path(constants.HF_HUB_CACHE)]
    path = Path(opts.dataset).expanduser()
    return [path if path.is_dir() else path.parent]


def _image_column(datasets, ds, wanted, name):
    images = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
    if wanted is None:
        if len(images) != 1:
            raise PackError(f"{name} has {len(images)} image columns ({', '.join(images) or 'none'}) among "
                            f"{', '.join(ds.features)}; name one with --image_column")
        return images[0]
    if wanted not in ds.features:
        raise PackError(f"--image_column {wanted}: {name} has no such column; its columns: {', '.join(ds.features)}")
    if wanted not in images:
        raise PackError(f"--image_column {wanted} holds {ds.features[wanted]}, not images; image columns: "
                        f"{', '.join(images) or 'none'}")
    return wanted


def _items(rows, column, roots):
    for i, row in enumerate(rows):
        image, name = row[column], f"row{i:08d}"
        if image and image.get("bytes"):
            yield Item(name, image["bytes"])
        elif image and image.get("path"):  # an imagefolder row refers to its file
            try:
                yield Item(name, str(regular_file(image["path"], roots, "row file")))
            except UnsafePath:
                yield Skip(name, "unsafe_path")
        else:
            yield Skip(name, "unreadable")


def read_hf(opts):
    """Every image of one split and column of a Hugging Face dataset, in row order."""
    if not opts.dataset:
        raise PackError("source 'hf' needs --dataset NAME_OR_PATH (a Hub dataset, a parquet file or folder, "
                        "an image folder, or a save_to_disk folder)")
    datasets = _import_datasets()
    ds, origin = _load(datasets, opts)
    column = _image_column(datasets, ds, opts.image_column, opts.dataset)
    rows = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    info = {"hf_dataset": opts.dataset if origin == "hub" else Path(opts.dataset).name, "hf_origin": origin,
            "hf_split": opts.split, "hf_image_column": column, "expected_count": len(ds)}
    return Source(_items(rows, column, _roots(datasets, opts, origin)), info)
