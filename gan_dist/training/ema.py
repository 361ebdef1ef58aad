"""Exponential moving average of G's weights (G_ema), with a half-life counted in images.

    G_ema = make_ema(accelerator.unwrap_model(G))
    ...after each G step:
    update(G_ema, accelerator.unwrap_model(G), global_batch, ema_kimg=args.ema_kimg)

As in StyleGAN2-ADA, G_ema keeps half of its weight after `ema_kimg` thousand images,
whatever the batch size: beta = 0.5 ** (global_batch / (ema_kimg * 1000)). Parameters are
averaged; buffers (BatchNorm running statistics) are copied. The update is deterministic,
so ranks holding the same G hold the same G_ema. `save_ema`/`load_ema` keep it in a
checkpoint directory as G_ema.safetensors.
"""
import copy
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors.torch import load_file, save_file

EMA_FILE = "G_ema.safetensors"  # beside Accelerate's model.safetensors (G) in a checkpoint directory


def make_ema(G):
    """A frozen copy of G (DDP wrapper removed) in eval mode, to be moved along by `update`."""
    G_ema = copy.deepcopy(extract_model_from_parallel(G)).eval()
    G_ema.requires_grad_(False)
    return G_ema


def ema_beta(global_batch, ema_kimg, num_imgs_seen=None, ema_rampup=None):
    """Weight kept by G_ema per step.

    Args:
        global_batch: images per optimizer step over all processes.
        ema_kimg: half-life of the average in thousands of images.
        num_imgs_seen: images trained on so far (only used with `ema_rampup`).
        ema_rampup: if set, the half-life is at most `ema_rampup * num_imgs_seen`, so early
            weights are forgotten quickly (StyleGAN2-ADA uses 0.05); None = off.
    """
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        if num_imgs_seen is None:
            raise ValueError("ema_rampup needs num_imgs_seen")
        ema_nimg = min(ema_nimg, num_imgs_seen * ema_rampup)
    return 0.5 ** (global_batch / max(ema_nimg, 1e-8))


def _pairs(G_ema, G):
    """(G_ema's parameters, G's, G_ema's buffers, G's) as lists in one order; built once per (G_ema, G)
    and kept on G_ema, since update runs every step."""
    cached = G_ema.__dict__.get("_ema_pairs")
    if cached is not None and cached[0] is G:
        return cached[1]
    G_plain = extract_model_from_parallel(G)
    params, params_ema = dict(G_plain.named_parameters()), dict(G_ema.named_parameters())
    buffers, buffers_ema = dict(G_plain.named_buffers()), dict(G_ema.named_buffers())
    if params.keys() != params_ema.keys() or buffers.keys() != buffers_ema.keys():
        raise ValueError("G_ema and G have different parameters or buffers; build G_ema with make_ema(G)")
    pairs = (list(params_ema.values()), [params[n].detach() for n in params_ema],
             list(buffers_ema.values()), [buffers[n] for n in buffers_ema])
    G_ema.__dict__["_ema_pairs"] = (G, pairs)
    return pairs


@torch.no_grad()
def update(G_ema, G, global_batch, ema_kimg=10.0, num_imgs_seen=None, ema_rampup=None):
    """Move G_ema toward G: p_ema <- beta * p_ema + (1 - beta) * p; buffers copied. Returns beta.

    Args:
        G_ema: the average, from `make_ema`.
        G: the trained generator (a DDP wrapper is removed).
        global_batch, ema_kimg, num_imgs_seen, ema_rampup: see `ema_beta`.
    """
    beta = ema_beta(global_batch, ema_kimg, num_imgs_seen, ema_rampup)
    params_ema, params, buffers_ema, buffers = _pairs(G_ema, G)
    # one multi-tensor in-place pass: p_ema += (1 - beta) * (p - p_ema)
    torch._foreach_lerp_(params_ema, params, 1.0 - beta)
    for b_ema, b in zip(buffers_ema, buffers):
        b_ema.copy_(b)
    return beta


def save_ema(G_ema, checkpoint_dir):
    """Write G_ema's state to CHECKPOINT_DIR/G_ema.safetensors (what `python -m gan_dist.sample` looks for).
    The directory is a checkpoint's `.partial` one, renamed whole when complete: no temporary file needed."""
    path = Path(checkpoint_dir) / EMA_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in G_ema.state_dict().items()}, str(path))
    return path


def load_ema(G_ema, checkpoint_dir):
    """Load CHECKPOINT_DIR/G_ema.safetensors into G_ema; False (G_ema untouched) when the file is absent."""
    path = Path(checkpoint_dir) / EMA_FILE
    if not path.is_file():
        return False
    G_ema.load_state_dict(load_file(str(path)))
    return True
