"""Checks for what goes wrong silently in data-parallel training.

- `check_launch`: the launcher started N processes but Accelerate formed a group of
  another size, e.g. torchrun on a GPU-less machine without --cpu, which gives N
  separate, duplicated trainings and no error.
- `check_same_choice`: every rank resolved a device-dependent default (such as `--size`) alike.
- `check_consistency`: every rank holds bit-identical parameters and buffers (after
  StyleGAN2-ADA's check_ddp_consistency). Called on every rank; it is a collective.
"""
import hashlib
import os

import torch
from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs, InitProcessGroupKwargs

COMM_HOOKS = {"no": DDPCommunicationHookType.NO, "fp16": DDPCommunicationHookType.FP16,
              "bf16": DDPCommunicationHookType.BF16}


class DistributedError(RuntimeError):
    """The process group is not what the launch asked for, or ranks have drifted apart."""


def check_launch(accelerator):
    """Raise DistributedError if the launcher's WORLD_SIZE differs from Accelerate's process count."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise DistributedError(
            f"the launcher started WORLD_SIZE={launched} processes but Accelerate formed a group of "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); each process would train "
            "its own duplicate model. On a machine without GPUs pass --cpu (or set "
            "ACCELERATE_USE_CPU=1); on GPUs check that every process sees a CUDA device.")


def check_same_choice(accelerator, what, value, fix):
    """Raise DistributedError unless every rank made the same choice `value` (a small picklable thing) for `what`;
    a collective, so every rank calls it. `fix` tells the user how to make the ranks agree."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object
    values = gather_object([value])
    if any(v != values[0] for v in values):
        each = ", ".join(f"rank {rank}: {v}" for rank, v in enumerate(values))
        raise DistributedError(f"the processes chose {what} differently ({each}); {fix}")


def ddp_kwargs(bucket_cap_mb=25, comm_hook="no"):
    """Accelerate kwargs handler for the DDP wrappers of G and D.

    Args:
        bucket_cap_mb: gradient bucket size; larger buckets mean fewer, larger all-reduces.
        comm_hook: "fp16"/"bf16" compress gradients to 16 bits for the all-reduce (half the bytes).
    """
    return DistributedDataParallelKwargs(bucket_cap_mb=bucket_cap_mb, comm_hook=COMM_HOOKS[comm_hook])


def process_group_kwargs(backend=None):
    """Accelerate kwargs handlers that pick the process-group backend; none keeps Accelerate's choice."""
    return [InitProcessGroupKwargs(backend=backend)] if backend else []


def convert_sync_bn(accelerator, *modules):
    """Replace BatchNorm layers with SyncBatchNorm (batch statistics over all ranks); CUDA only."""
    if accelerator.num_processes == 1:
        return modules
    if accelerator.device.type != "cuda":
        raise DistributedError("--sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU kernel; "
                               "drop --sync_bn for CPU runs (rank 0's BatchNorm statistics are broadcast)")
    return tuple(torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in modules)


def sync_buffers(accelerator, modules):
    """Copy rank 0's buffers (BatchNorm running stats) to every rank, as DDP does before each forward.

    Between forwards each rank's running stats hold its own last batch; DDP overwrites
    them with rank 0's at the next forward, so rank 0's are the run's real state.
    """
    if accelerator.num_processes == 1:
        return
    for module in modules.values():
        for buf in accelerator.unwrap_model(module).buffers():
            torch.distributed.broadcast(buf, src=0)


def _tensor_digest(t):
    data = t.detach().to("cpu", copy=True).contiguous().view(-1).view(torch.uint8).numpy()
    return int.from_bytes(hashlib.blake2b(data.tobytes(), digest_size=7).digest(), "little")


def check_consistency(accelerator, modules):
    """Raise DistributedError unless all ranks hold bit-identical tensors in `modules`.

    Args:
        accelerator: the run's Accelerator.
        modules: dict name -> nn.Module (wrapped or not); parameters and buffers are compared.
    """
    names, digests = [], []
    for mod_name, module in modules.items():
        for name, t in accelerator.unwrap_model(module).state_dict().items():
            names.append(f"{mod_name}.{name}")
            digests.append(_tensor_digest(t))
    local = torch.tensor(digests, dtype=torch.int64, device=accelerator.device)
    every = accelerator.gather(local).view(accelerator.num_processes, -1)
    differs = (every != every[0]).any(dim=0).nonzero().flatten().tolist()
    if differs:
        shown = ", ".join(names[i] for i in differs[:5])
        raise DistributedError(
            f"ranks hold different weights in {len(differs)} tensor(s) ({shown}"
            f"{', ...' if len(differs) > 5 else ''}): data-parallel training has drifted apart. "
            "Stopping; resume from the last checkpoint, which was saved before the drift was found.")
