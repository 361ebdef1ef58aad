"""GAN losses on discriminator logits, and the R1/R2 gradient penalties.

bce (the vanilla recipe, PyTorch-GAN's gan.py: a Sigmoid D with BCELoss). Softplus on logits is
the same loss, numerically stable and safe under autocast:
    -log(sigmoid(x))     = softplus(-x)
    -log(1 - sigmoid(x)) = softplus(x)
hinge (SAGAN, BigGAN): D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z)).
rpgan (relativistic pairing, R3GAN): each real is paired with one fake of the batch;
    D: softplus(-(D(x) - D(G(z))));  G: softplus(-(D(G(z)) - D(x))).
"""
import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge", "rpgan")


def d_loss(real_logits, fake_logits, kind="bce"):
    """D's loss for `kind`; bce is summed like gan.py's two BCE terms."""
    if kind == "bce":  # maximise log D(x) + log(1 - D(G(z)))
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "rpgan":
        return F.softplus(fake_logits - real_logits).mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


def g_loss(fake_logits, real_logits=None, kind="bce"):
    """G's loss for `kind`; rpgan needs D's logits on the paired reals."""
    if kind == "bce":  # non-saturating: maximise log D(G(z))
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "rpgan":
        return F.softplus(real_logits - fake_logits).mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


def gradient_penalty(logits, inputs, scaler=None):
    """Zero-centred penalty E ||d D(x) / d x||^2 over D's outputs, in fp32; differentiable (create_graph).

    With R1 `inputs` are the reals D saw, with R2 the fakes; both need requires_grad before D's forward.
    With an fp16 GradScaler the input gradients are taken of the scaled logits (small gradients would
    underflow in fp16 otherwise) and unscaled before squaring, as in PyTorch's AMP "gradient penalty" example;
    an overflow gives inf, which makes the scaler skip the step. When D packs k images into one output,
    x is the pack: the squared norms of its k images add up (the mean over images, times k).
    """
    outputs = logits.float().sum()
    scale = scaler.get_scale() if scaler is not None else 1.0
    (grad,) = torch.autograd.grad(outputs * scale, inputs, create_graph=True)
    grad = grad.float() / scale
    images_per_output = inputs.size(0) // logits.size(0)
    return grad.square().sum(dim=list(range(1, grad.dim()))).mean() * images_per_output
