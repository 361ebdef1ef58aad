"""Gradient accumulation against one big batch: after each step, D's and G's gradients and weights must equal
those of one process that ran the whole global batch at once (the norm-free resnet, to float tolerance).

tests/test_accumulation.py imports it for 1 process x 32 x 2 against 1 x 64, and runs it under torchrun for
2 gloo ranks x 16 x 2 against 1 x 64:

    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 tests/accumulation_check.py

Under DDP it also records the gradient all-reduces: each of a network's buckets once per optimizer step,
whatever the accumulation (the micro-batches before the last run under no_sync).
"""
import torch
from accelerate import Accelerator

from gan_dist.networks.models import GANConfig, build_models
from gan_dist.training.step import GANStep, adam

GLOBAL_BATCH, LATENT, LR = 64, 8, 1e-3
GAMMA = 10.0  # large enough that the penalties carry a good share of D's gradient
# (loss, [(r1_gamma, r2_gamma) per step]): no penalties; R1 + R2 every step; lazy R1 alone (gamma x 2 every 2)
CASES = {"rpgan": ("rpgan", [(0.0, 0.0), (0.0, 0.0)]),
         "rpgan+R1+R2": ("rpgan", [(GAMMA, GAMMA), (GAMMA, GAMMA)]),
         "hinge+lazy R1": ("hinge", [(0.0, 0.0), (2 * GAMMA, 0.0)])}


def tiny_nets():
    """The same small R3GAN-style pair on every call, laid out channels-last as the trainer runs it."""
    torch.manual_seed(0)
    G, D = build_models(GANConfig("resnet", latent_dim=LATENT, img_size=32, channels=3, widths=(16, 16, 8, 8),
                                  group_size=8))
    with torch.no_grad():  # give the zero-initialised last convs weights, so every layer has a gradient
        for net in (G, D):
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)


def global_batches(steps):
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(GLOBAL_BATCH, 3, 32, 32, generator=gen) * 2 - 1, torch.randn(GLOBAL_BATCH, LATENT,
                                                                                       generator=gen))
            for _ in range(steps)]


def snapshot(accelerator, G, D):
    """{name: gradient or weight} of both networks, detached copies."""
    out = {}
    for net_name, net in (("G", G), ("D", D)):
        for name, p in accelerator.unwrap_model(net).named_parameters():
            out[f"{net_name}.{name}"] = p.detach().clone()
            out[f"{net_name}.{name}.grad"] = p.grad.detach().clone()
    return out


def train(accelerator, loss, gammas, accumulation, prepare, rank=0, world=1, count_all_reduces=False):
    """Fresh tiny nets trained for len(gammas) steps on this rank's share of each global batch: a snapshot
    after each step, and each step's all-reduced buckets per network when counted (DDP only)."""
    G, D = tiny_nets()
    opt_G, opt_D = (adam(n.parameters(), LR, (0.0, 0.99), accelerator.device) for n in (G, D))
    if prepare:
        G, D, opt_G, opt_D = accelerator.prepare(G, D, opt_G, opt_D)
    calls = {"G": [], "D": []}
    if count_all_reduces:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        for name, net in (("G", G), ("D", D)):
            def hook(state, bucket, name=name):
                calls[name].append(bucket.index())
                return allreduce_hook(state, bucket)
            net.register_comm_hook(None, hook)
    gan_step = GANStep(accelerator, G, D, opt_G, opt_D, loss=loss, accumulation=accumulation)
    snapshots, all_reduces = [], []
    for (real, z), (r1, r2) in zip(global_batches(len(gammas)), gammas):
        mine = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        gan_step(real[mine], z[mine], r1_gamma=r1, r2_gamma=r2)
        snapshots.append(snapshot(accelerator, G, D))
        all_reduces.append({name: sorted(buckets) for name, buckets in calls.items()})
        calls.update(G=[], D=[])
    return snapshots, all_reduces


def differences(snapshots, reference, rtol=1e-3, atol=1e-7):
    """'step S name: max |diff| ...' for every tensor whose largest difference exceeds rtol x its largest value
    (+ atol): float rounding differs between batch sizes, and Adam carries step 1's rounding into step 2."""
    found, worst = [], 0.0
    for step, (got, want) in enumerate(zip(snapshots, reference), start=1):
        for name, t in got.items():
            diff, scale = (t - want[name]).abs().max().item(), want[name].abs().max().item()
            worst = max(worst, diff / (scale + atol))
            if diff > rtol * scale + atol:
                found.append(f"step {step} {name}: max |diff| {diff:.3g}, max |ref| {scale:.3g}")
    return found, worst


def main():
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    for case, (loss, gammas) in CASES.items():
        reference, _ = train(accelerator, loss, gammas, accumulation=1, prepare=False)  # 1 x 64, no DDP
        got, all_reduces = train(accelerator, loss, gammas, accumulation=2, prepare=True, rank=rank, world=world,
                                 count_all_reduces=world > 1)
        wrong, worst = differences(got, reference)
        if wrong:
            raise SystemExit(f"rank {rank} {case}: {world} x {GLOBAL_BATCH // world // 2} x 2 differs from "
                             f"1 x {GLOBAL_BATCH}:\n" + "\n".join(wrong[:10]))
        if world > 1 and not all(buckets and len(set(buckets)) == len(buckets)
                                 for step in all_reduces for buckets in step.values()):
            raise SystemExit(f"rank {rank} {case}: all-reduced buckets per step {all_reduces}; expected each "
                             "bucket of each network once")
        print(f"rank {rank} {case}: accumulated gradients and weights match one process (largest difference "
              f"{worst:.1g} of the tensor's largest value); all-reduced buckets per step {all_reduces}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
