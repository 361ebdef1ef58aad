"""Class conditioning (--cond): G's learned class embedding, D's projection head, and class ids from names.

G embeds each class id in a learned vector as long as z and reads z and the embedding side by side, as R3GAN's
conditional generator does. D scores features h with a projection head (Miyato & Koyama, "cGANs with
Projection Discriminator", 2018): logit = psi(h) + <embed(y), h>, where psi is D's unconditional last layer.
"""
import numpy as np
import torch
import torch.nn as nn

SHOWN_CLASSES = 20  # class names an error message lists before saying how many there are
GRID_CLASSES = 10  # rows of a conditional sample grid: the first classes, one row each


class ClassEmbedding(nn.Module):
    """Class ids (B,) -> learned vectors (B, dim), drawn N(0, 1) like z."""

    def __init__(self, num_classes, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, c):
        return self.weight[c]


def _takes_classes(c, conditional, net, per):
    """Whether the call passes class ids `c`, refusing ids to an unconditional net and their absence to a
    conditional one."""
    if conditional and c is None:
        raise ValueError(f"this {net} is class-conditional: pass a class id per {per}")
    if not conditional and c is not None:
        raise ValueError(f"this {net} is unconditional: it takes no class ids")
    return conditional


def with_classes(z, c, embed):
    """G's input: z alone for an unconditional G (`embed` None), else z and the classes' embedding side by side."""
    if not _takes_classes(c, embed is not None, "generator", "latent"):
        return z
    return torch.cat([z, embed(c).to(z.dtype)], 1)


class Projection(nn.Module):
    """The class term of a projection discriminator: <embed(y), h> for features h (B, features)."""

    def __init__(self, num_classes, features):
        super().__init__()
        # 1 / sqrt(features): the inner product starts at about the scale of one feature
        self.weight = nn.Parameter(torch.randn(num_classes, features) / features ** 0.5)

    def forward(self, h, c):  # (B, features), (B,) -> (B, 1)
        return (self.weight[c].to(h.dtype) * h).sum(1, keepdim=True)


def projected(logit, h, c, projection):
    """D's logit psi(h), plus <embed(y), h> when D is conditional."""
    if not _takes_classes(c, projection is not None, "discriminator", "image"):
        return logit
    return logit + projection(h, c)


def listed(classes):
    """The class names for an error message: all of them, or the first SHOWN_CLASSES and how many there are."""
    shown = ", ".join(classes[:SHOWN_CLASSES])
    return shown if len(classes) <= SHOWN_CLASSES else f"{shown}, ... ({len(classes)} classes; ids 0 to " \
                                                        f"{len(classes) - 1})"


def class_ids(classes, wanted):
    """The ids of `wanted` classes, each a name of `classes` or, failing that, a class number (0-based).

    Raises ValueError naming the first one that is neither, with the classes there are."""
    if not classes:
        raise ValueError("this generator is unconditional: it has no classes to choose from")
    index = {name: i for i, name in enumerate(classes)}
    ids = []
    for w in wanted:
        text = str(w)
        if text in index:
            ids.append(index[text])
        elif text.isdecimal() and len(text) < 10 and int(text) < len(classes):
            ids.append(int(text))
        else:
            raise ValueError(f"no class {text!r}; the classes are: {listed(list(classes))}")
    return ids


def classes_as_data(counts, n):
    """n class ids whose frequencies follow `counts` (images per class), without drawing random numbers:
    each class gets its share rounded down, the largest remainders one more, in class order."""
    counts = np.asarray(counts, dtype=np.float64)
    share = counts / counts.sum() * n
    each = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - each), kind="stable")[: n - int(each.sum())]
    each[extra] += 1
    return torch.repeat_interleave(torch.arange(len(counts)), torch.from_numpy(each))


def grid_classes(num_classes, n_samples):
    """A conditional sample grid's layout: (the class of each cell, row by row (rows * columns,), columns). One row
    per class, for the first GRID_CLASSES classes; as many columns as a square grid of n_samples has."""
    rows, columns = min(num_classes, GRID_CLASSES), max(1, int(np.ceil(np.sqrt(n_samples))))
    return torch.arange(rows).repeat_interleave(columns), columns
