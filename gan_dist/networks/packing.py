"""Packing (PacGAN): D judges several images at once."""


def pack_images(img, pack):
    """(B, C, H, W) -> (B / pack, pack * C, H, W): each run of `pack` consecutive images becomes one input
    (PacGAN, Lin et al. 2018), so D judges them together and sees how alike a batch's samples are."""
    if pack == 1:
        return img
    if img.size(0) % pack:
        raise ValueError(f"a batch of {img.size(0)} images does not split into packs of {pack}")
    return img.reshape(img.size(0) // pack, pack * img.size(1), *img.shape[2:])
