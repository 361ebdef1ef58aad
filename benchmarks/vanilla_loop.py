"""The vanilla GAN's training loop (PyTorch-GAN's gan.py at 128x128 RGB), shipped so the bench can run it.

The reference we measure against: a faithful single-process copy of the vanilla MLP GAN (generator
Linear+BatchNorm1d(eps=0.8)+LeakyReLU blocks to a Tanh image, discriminator 3-layer
MLP with Sigmoid, BCELoss, Adam 2e-4 with betas (0.5, 0.999), latent 100, batch 64,
128x128 RGB), reading an image folder with torchvision's ImageFolder as the original
recipe did. Only its typos are fixed (loss.backward() instead of optimizer.backward()), and
the script body sits in main() so importing this module runs nothing.

Extra flags, for measuring only: --data (the image folder), --max-batches stops early,
--warmup-batches are left out of the timing, and one JSON line with images/s is printed
at the end.

    python -m benchmarks.vanilla_loop --data DIR_WITH_ONE_SUBFOLDER_OF_IMAGES --max-batches 50
"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn
from torchvision import datasets, transforms
from torchvision.utils import save_image


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n_epochs", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0002)
    p.add_argument("--b1", type=float, default=0.5)
    p.add_argument("--b2", type=float, default=0.999)
    p.add_argument("--n_cpu", type=int, default=2)
    p.add_argument("--latent_dim", type=int, default=100)
    p.add_argument("--img_size", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--sample_interval", type=int, default=500)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="seed_out")
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--warmup-batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    opt = p.parse_args(argv)
    torch.manual_seed(opt.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    img_shape = (opt.channels, opt.img_size, opt.img_size)
    img_area = opt.channels * opt.img_size * opt.img_size

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()

            def block(i, o, normalize=True):
                layers = [nn.Linear(i, o)]
                if normalize:
                    layers.append(nn.BatchNorm1d(o, 0.8))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                return layers

            self.model = nn.Sequential(
                *block(opt.latent_dim, 128, normalize=False), *block(128, 256),
                *block(256, 512), *block(512, 1024), nn.Linear(1024, img_area), nn.Tanh())

        def forward(self, z):
            return self.model(z).view(z.size(0), *img_shape)

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(
                nn.Linear(img_area, 512), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(256, 1), nn.Sigmoid())

        def forward(self, img):
            return self.model(img.view(img.size(0), -1))

    tf = transforms.Compose([
        transforms.Resize((opt.img_size, opt.img_size)), transforms.ToTensor(),
        transforms.Normalize([0.5] * opt.channels, [0.5] * opt.channels)])
    if opt.channels == 1:
        tf = transforms.Compose([transforms.Grayscale(), tf])
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(opt.data, transform=tf), batch_size=opt.batch_size,
        shuffle=True, num_workers=opt.n_cpu, drop_last=True)
    G, D = Generator().to(device), Discriminator().to(device)
    criterion = nn.BCELoss()
    opt_G = torch.optim.Adam(G.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2))
    opt_D = torch.optim.Adam(D.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2))
    os.makedirs(opt.out, exist_ok=True)

    done, t0, timed = 0, None, 0
    for epoch in range(opt.n_epochs):
        for i, (imgs, _) in enumerate(loader):
            if done == opt.warmup_batches:
                t0 = time.perf_counter()
            n = imgs.size(0)
            real = imgs.to(device)
            ones, zeros = torch.ones(n, 1, device=device), torch.zeros(n, 1, device=device)
            real_out = D(real)
            fake = G(torch.randn(n, opt.latent_dim, device=device)).detach()
            fake_out = D(fake)
            loss_D = criterion(real_out, ones) + criterion(fake_out, zeros)
            opt_D.zero_grad()
            loss_D.backward()
            opt_D.step()
            fake = G(torch.randn(n, opt.latent_dim, device=device))
            loss_G = criterion(D(fake), ones)
            opt_G.zero_grad()
            loss_G.backward()
            opt_G.step()
            done += 1
            if done > opt.warmup_batches:
                timed += n
            if (i + 1) % 100 == 0:
                print("[Epoch %d/%d] [Batch %d/%d] [D loss: %f] [G loss: %f] [D real: %f] [D fake: %f]" % (
                    epoch, opt.n_epochs, i, len(loader), loss_D.item(), loss_G.item(),
                    real_out.mean().item(), fake_out.mean().item()))
            batches_done = epoch * len(loader) + i
            if batches_done % opt.sample_interval == 0:
                save_image(fake.data[:25], os.path.join(opt.out, "%d.png" % batches_done), nrow=5, normalize=True)
            if opt.max_batches and done >= opt.max_batches:
                break
        if opt.max_batches and done >= opt.max_batches:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0 if t0 else float("nan")
    torch.save(G.state_dict(), os.path.join(opt.out, "generator.pth"))
    torch.save(D.state_dict(), os.path.join(opt.out, "discriminator.pth"))
    print(json.dumps({"images_per_s": timed / dt if dt else None, "batches": done,
                      "loss_D": loss_D.item(), "loss_G": loss_G.item(), "device": device}))


if __name__ == "__main__":
    main()
