"""GAN losses on discriminator logits.

The vanilla recipe (PyTorch-GAN's gan.py) uses a Sigmoid D with BCELoss; softplus on logits is the same loss,
numerically stable and safe under autocast:
    -log(sigmoid(x))     = softplus(-x)
    -log(1 - sigmoid(x)) = softplus(x)
"""
import torch.nn.functional as F


def d_loss(real_logits, fake_logits):
    """D maximises log D(x) + log(1 - D(G(z))); summed like gan.py's two BCE terms."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits):
    """Non-saturating G loss: maximise log D(G(z))."""
    return F.softplus(-fake_logits).mean()
