"""Class labels of samples (--cond): each sample's `cls` member, the class's number as decimal text.

A label that is missing, malformed or not below the pack's number of classes makes its sample count as
damaged: the readers skip it and count it, as they do an image that does not decode, and --max_skip_fraction
bounds how many may be. With labels, a batch is the pair (uint8 images (B, C, H, W), int64 class ids (B,)).
"""
import re

import torch

_DECIMAL = re.compile(rb"\s*(\d{1,9})\s*")


def label_of(sample, num_classes):
    """A sample's class id, or None when its `cls` is missing, malformed or out of range."""
    data = sample.get("cls") if sample is not None else None
    match = _DECIMAL.fullmatch(bytes(data)) if isinstance(data, (bytes, bytearray)) and len(data) < 32 else None
    if match is None:
        return None
    label = int(match.group(1))
    return label if label < num_classes else None


def labelled(prepare, collate, num_classes):
    """(prepare, collate) of the batching stage with each sample's label: a sample whose image or label is
    bad becomes None (skipped and counted); a batch becomes (collate(items), class ids)."""
    def prepare_labelled(sample):
        item, label = prepare(sample), label_of(sample, num_classes)
        return None if item is None or label is None else (item, label)

    def collate_labelled(pairs):
        items, labels = zip(*pairs)
        return collate(list(items)), torch.tensor(labels, dtype=torch.int64)
    return prepare_labelled, collate_labelled
