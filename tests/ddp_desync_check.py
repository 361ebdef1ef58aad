"""Run under torchrun with 2 CPU ranks: the consistency check must pass, then catch a drifted buffer."""
import torch
from accelerate import Accelerator

from gan_dist.training.ddp import DistributedError, check_consistency

accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
net = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)))
check_consistency(accelerator, {"G": net})  # identical after prepare: passes
if accelerator.process_index == 1:
    with torch.no_grad():
        accelerator.unwrap_model(net)[1].running_mean[2] += 1e-6  # a drifted buffer on one rank
try:
    check_consistency(accelerator, {"G": net})
except DistributedError as e:
    assert "G.1.running_mean" in str(e), e
    print(f"rank {accelerator.process_index}: drift caught")
else:
    raise SystemExit(f"rank {accelerator.process_index}: desync not detected")
accelerator.end_training()
