"""How the training loop spreads a model over processes: DDP replicas or FSDP2 shards.

``train.parallel=ddp`` (the default) keeps a whole replica of the model, its gradients and optimizer
state in every process and all-reduces the gradients: the fastest while a replica fits. With
``train.parallel=fsdp`` each process keeps 1/N of every parameter, gradient and optimizer state
(PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``); a unit's full weights are gathered for its
forward and backward and freed after, so memory per process falls towards 1/N for the large sizes.

FSDP is applied here, not through accelerate's FSDP plugin: accelerate (1.16) enables its plugin only
for GPU-like devices and silently falls back to DDP on CPU processes, while ``fully_shard`` runs on CPU
(gloo) and GPU (NCCL) alike, so the path CI tests is the one a cluster runs. Accelerate still launches
the processes and sets up the process group and the devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import nn

PARALLEL = ("ddp", "fsdp")


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place: each unit the model names (``model.fsdp_units()``, e.g. FourM's blocks), then the
    rest as the root unit. Needs an initialised process group; create the optimizer afterwards.

    FSDP reduce-scatters the gradients of a unit's parameters as one buffer, so every process must
    give every parameter a gradient: a modality absent from one process' batch would leave its table
    and head out, and the processes' buffers would no longer match (gloo aborts, NCCL hangs). The
    root unit's parameters are therefore added to the model's loss times zero (DDP instead is told
    of unused parameters). Unlike DDP, AdamW then still steps those parameters with a zero gradient
    (their moments decay and weight decay applies), which is what sharded trainers do.
    """
    from torch.distributed.fsdp import fully_shard

    units = list(getattr(model, "fsdp_units", list)())
    for unit in units:
        fully_shard(unit)
    in_units = {id(p) for unit in units for p in unit.parameters()}
    names = [n for n, p in model.named_parameters() if id(p) not in in_units]
    # registered before the root's own FSDP hooks, so it runs while the root's parameters are whole
    model.register_forward_hook(functools.partial(_every_root_parameter_in_the_loss, names=names))
    fully_shard(model)
    return model


def _every_root_parameter_in_the_loss(module: nn.Module, inputs, output, names: list[str]):
    zero = sum(module.get_parameter(n).sum() for n in names) * 0.0
    if isinstance(output, torch.Tensor):
        return output + zero
    if dataclasses.is_dataclass(output) and hasattr(output, "loss"):
        return dataclasses.replace(output, loss=output.loss + zero)
    raise TypeError(f"train.parallel=fsdp needs a model whose forward returns its loss (a tensor, or a dataclass "
                    f"with .loss); {type(module).__name__} returns {type(output).__name__}")


def build_sharded(build: Callable[[], nn.Module], device: torch.device, main: bool, compile: bool = False
                  ) -> nn.Module:
    """A model built and sharded without a whole copy on every process.

    The main process builds it for real; the others build it on the meta device (shapes, no memory).
    After sharding, those allocate their shards, and the main process' weights and buffers are
    broadcast into every process: the same start as building it everywhere from one seed, with one
    whole model in memory (the main process') instead of one per process.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if main:
        model = build().to(device)
    else:
        with torch.device("meta"):
            model = build()
    whole = model.state_dict() if main else {}
    if compile:  # in place, before sharding; a model may choose what to compile (FourM: its blocks)
        model.compile()
    shard(model)
    if not main:
        model.to_empty(device=device)
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():  # unsharded; non-persistent ones are in no state dict
        dist.broadcast(buffer, src=0)
    return model


def is_sharded(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")  # what fully_shard adds to a module


def gradient_sync(model: nn.Module, sync: bool):
    """A context for one micro-batch: DDP and FSDP reduce gradients on every backward unless told not to,
    so only the last micro-batch of an optimizer step syncs them."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def local(value):
    """A plain tensor from a value that may be a DTensor (a sharded model's gradient norm)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def model_state(model: nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """The weights as a state dict: the local shards (``full=False``), or the whole tensors gathered
    onto the CPU of rank 0 (``full=True``; other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=full, cpu_offload=full))
