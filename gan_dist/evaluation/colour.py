"""Colour statistics of image batches, and a tracker for generated-vs-real drift.

    real = colour_stats(real_img)                 # once; images in [-1, 1]
    drift = DriftTracker()
    ...at each sample interval:
    row = colour_report(colour_stats(gen_img), real)
    for message in drift.update(row, step):
        accelerator.print(message)

Saturation and contrast that rise as training goes on show up here as a gap between
generated and real images that grows evaluation after evaluation. All statistics are
on the [0, 1] scale, whatever the images' range.
"""
import torch

CHANNEL_NAMES = {1: ("gray",), 3: ("r", "g", "b")}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def colour_stats(images):
    """Per-channel mean and std, mean HSV saturation and RMS contrast of a batch.

    Args:
        images: float (B, C, H, W) in [-1, 1] with C = 1 or 3.

    Returns:
        {"mean_r", "std_r", ... (or "mean_gray", "std_gray"), "saturation", "contrast"} as floats:
        channel statistics over all pixels of the batch; saturation = mean of (max - min) / max over
        channels per pixel (0 for greyscale and black pixels); contrast = the std of each image's
        luma over its pixels, averaged over the batch.
    """
    if images.dim() != 4 or images.size(1) not in CHANNEL_NAMES:
        raise ValueError(f"expected images (B, C, H, W) with 1 or 3 channels, got {tuple(images.shape)}")
    x = (images.detach().float().clamp(-1, 1) + 1) / 2  # (B, C, H, W) in [0, 1]
    stats = {}
    for c, name in enumerate(CHANNEL_NAMES[x.size(1)]):
        stats[f"mean_{name}"] = x[:, c].mean().item()
        stats[f"std_{name}"] = x[:, c].std(unbiased=False).item()
    if x.size(1) == 3:
        hi, lo = x.amax(dim=1), x.amin(dim=1)  # (B, H, W)
        saturation = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
        luma = torch.einsum("bchw,c->bhw", x, x.new_tensor(LUMA))
    else:
        saturation = torch.zeros_like(x[:, 0])
        luma = x[:, 0]
    stats["saturation"] = saturation.mean().item()
    stats["contrast"] = luma.flatten(1).std(dim=1, unbiased=False).mean().item()
    return stats


def colour_gap(gen, real):
    """gen - real for every statistic both hold."""
    return {k: gen[k] - real[k] for k in gen if k in real}


def colour_report(gen, real):
    """One flat row for the logs: gen_*, real_* and gap_* (= gen - real) for every statistic."""
    row = {f"gen_{k}": v for k, v in gen.items()}
    row.update({f"real_{k}": v for k, v in real.items()})
    row.update({f"gap_{k}": v for k, v in colour_gap(gen, real).items()})
    return row


class DriftTracker:
    """Warns when |gen - real| of a statistic has grown at `patience` evaluations in a row.

    Args:
        keys: statistics to watch (names from `colour_stats`).
        patience: consecutive growths that trigger a warning (and every further growth warns again).

    Keeps `state_dict`/`load_state_dict`, so it can be registered for checkpointing.
    """

    def __init__(self, keys=("saturation", "contrast"), patience=3):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.keys, self.patience = tuple(keys), patience
        self.history = {k: [] for k in self.keys}  # (step, signed gap) of the current streak

    def update(self, row, step):
        """Record one evaluation's gaps; return a warning message per statistic drifting away.

        Args:
            row: a dict holding `gap_KEY` per watched key (a `colour_report` row).
            step: the training step, quoted in the message.
        """
        messages = []
        for key in self.keys:
            gap = row.get(f"gap_{key}")
            if gap is None:
                continue
            hist = self.history[key]
            if hist and abs(gap) <= abs(hist[-1][1]):
                hist.clear()  # the streak is broken; this evaluation starts a new one
            hist.append((step, gap))
            growths = len(hist) - 1
            if growths >= self.patience:
                side = "above" if gap > 0 else "below"
                trail = " -> ".join(f"{g:+.3f} (step {s})" for s, g in hist[-self.patience - 1:])
                messages.append(f"warning: generated {key} drifts from the real images': {abs(gap):.3f} {side} "
                                f"them, grown {growths} evaluations in a row: {trail}")
        return messages

    def state_dict(self):
        return {"history": {k: [list(e) for e in v] for k, v in self.history.items()}}

    def load_state_dict(self, state):
        self.history = {k: [tuple(e) for e in state["history"].get(k, [])] for k in self.keys}
