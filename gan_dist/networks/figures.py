"""What a network configuration costs, counted without building it for real (on the meta device): parameters
(and the budget they must keep), FLOPs per image, and the banner's line."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from gan_dist.budgets import BYTES_PER_PARAM, MAX_PARAMS, BudgetError
from gan_dist.networks.models import build_models, count_params


def network_params(gan_config):
    """(G's parameters, D's), counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        G, D = build_models(gan_config)
    return count_params(G), count_params(D)


def check_params(gan_config, limit=MAX_PARAMS, where="", both=False):
    """Raise BudgetError if G (or, with `both`, G or D) would have more than `limit` parameters.
    Returns (G's parameters, D's)."""
    n_G, n_D = network_params(gan_config)
    biggest = max(n_G, n_D) if both else n_G
    if biggest > limit:
        nets = f"G {n_G:,} and D {n_D:,} parameters" if both else f"G {n_G:,} parameters"
        memory = f", about {BYTES_PER_PARAM * (n_G + n_D) / 1e9:,.0f} GB to train" if both else ""
        raise BudgetError(f"{where}this network would have {nets}{memory}, above the budget of {limit:,} "
                          "parameters per network; refusing to build it")
    return n_G, n_D


def network_figures(gan_config):
    """G's and D's parameters and forward GFLOPs per image: {"G_params", "D_params", "G_gflops", "D_gflops"}.
    Counted on the meta device, so nothing is computed or allocated; FLOPs by torch's FlopCounterMode
    (convolutions and matrix products; elementwise work is not counted)."""
    with torch.device("meta"), torch.no_grad():
        G, D = build_models(gan_config)
        G.eval(), D.eval()  # BatchNorm on one image: its running statistics
        z = torch.zeros(1, gan_config.latent_dim)
        imgs = torch.zeros(gan_config.pacgan, gan_config.channels, gan_config.img_size, gan_config.img_size)
        c = (lambda n: torch.zeros(n, dtype=torch.long)) if gan_config.classes else (lambda n: None)  # --cond
        with FlopCounterMode(display=False) as g_count:
            G(z, c(1))
        with FlopCounterMode(display=False) as d_count:
            D(imgs, c(gan_config.pacgan))  # a PacGAN group is one input of D
    return {"G_params": count_params(G), "D_params": count_params(D), "G_gflops": g_count.get_total_flops() / 1e9,
            "D_gflops": d_count.get_total_flops() / gan_config.pacgan / 1e9}


def describe(figures):
    """The banner's line: 'G 0.15M parameters, 0.06 GFLOPs per image; D ...'."""
    return "; ".join(f"{net} {figures[f'{net}_params'] / 1e6:.2f}M parameters, "
                     f"{figures[f'{net}_gflops']:.3g} GFLOPs per image" for net in ("G", "D"))
