"""PacGAN (Lin et al. 2018): D judges several images at once."""


def pacgan_inputs(img, pacgan):
    """(B, C, H, W) -> (B / pacgan, pacgan * C, H, W): each run of `pacgan` consecutive images becomes one
    input, so D judges them together and sees how alike a batch's samples are."""
    if pacgan == 1:
        return img
    if img.size(0) % pacgan:
        raise ValueError(f"a batch of {img.size(0)} images does not split into PacGAN groups of {pacgan}")
    return img.reshape(img.size(0) // pacgan, pacgan * img.size(1), *img.shape[2:])
