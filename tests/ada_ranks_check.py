"""Run under torchrun with 2 CPU ranks: each rank sees other logits, yet both compute the same r_t and p,
the p that the signs of both ranks together give; a save holds the signs both ranks counted."""
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from gan_dist.training.augmentation import AdaptiveAugment

accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
ada = AdaptiveAugment("bgc", 0, "cpu", rank, target=0.6, interval=2, kimg=1.0, global_batch=8, relative=False, p=0.1)
# rank 0: every real above 0 (r = 1); rank 1: one of four (r = -0.5); both together: r_t = 0.25 < 0.6
logits = torch.tensor([1.0, 1.0, 1.0, 1.0]) if rank == 0 else torch.tensor([1.0, -1.0, -1.0, -1.0])
for step in range(1, 6):
    ada.observe(SimpleNamespace(real_logits=logits, fake_logits=torch.zeros(4)), step, accelerator)
state = ada.state_dict(accelerator)  # step 5 is pending
row = ada.log_row()
expected = 0.1 - 2 * 8 * 2 / 1000  # two adjustments down (r_t < target), each by global batch x interval / 1000
ps = accelerator.gather(ada.p.reshape(1)).tolist()
assert ps[0] == ps[1], f"rank {rank}: p differs across ranks: {ps}"
assert abs(ps[0] - expected) < 1e-6, f"rank {rank}: p {ps[0]}, expected {expected}"
assert row["aug_rt"] == 0.25, row
assert state["signs"] == 4 - 2 and state["count"] == 8, state  # both ranks' step-5 signs
print(f"rank {rank}: same p {ps[0]:.4f}, r_t {row['aug_rt']}")
accelerator.end_training()
