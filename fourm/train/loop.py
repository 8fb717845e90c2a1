"""The one training loop: accelerate, AdamW, warm-up + cosine, clipping, checkpoints, exact resume.

Whatever is trained (a tokenizer, FourM) is a :class:`Task` that supplies the model, a
deterministic stream of batches, a loss and held-out metrics; the loop owns everything else. The
same loop runs on a CPU, one GPU, or many processes under ``accelerate launch``.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``curves.png``,
``checkpoints/step-XXXXXXX/`` (model + optimizer + scheduler + RNG, written atomically, the last
``keep_last`` kept) and ``model/`` (the final weights, ``from_pretrained``-ready).

Many processes (``accelerate launch``, on one machine or many) train data-parallel: replicas under DDP,
or shards under FSDP2 (``parallel: fsdp``, see :mod:`fourm.train.parallel`), with sharded checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from tqdm import tqdm

from fourm.config import save_config
from fourm.io import write_json
from fourm.model.attention import attention_kernel
from fourm.model.precision import resolve_precision
from fourm.train.checkpoint import resume_checkpoint, save_checkpoint
from fourm.train.clipping import clip_gradients
from fourm.train.curves import MetricsLog
from fourm.train.host_memory import retain_freed_memory
from fourm.train.parallel import PARALLEL, build_sharded, gradient_sync, local, model_state


@dataclass
class TrainConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"compile": "use_compile", "tensorboard": "use_tensorboard"}

    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0: off
    grad_accum: int = 1
    precision: str = "auto"  # auto (bf16 where a timed matmul finds it faster: fast_bf16, else fp32) | bf16 | fp32
    use_compile: bool = False
    # recompute each block's activations in the backward: far less activation memory (bigger batches or
    # models on one device) for a second forward of the blocks (+20-29% a step at the tiny size on a CPU);
    # the model says what to recompute (``checkpoint_activations()``: FourM's blocks)
    use_activation_checkpointing: bool = False
    parallel: str = "ddp"  # over several processes: ddp (replicas) | fsdp (shards: fourm.train.parallel)
    eval_every: int = 250  # 0: only at the end
    save_every: int = 250
    keep_last: int = 2
    log_every: int = 10
    use_tensorboard: bool = True  # also log to <out>/tensorboard when the tensorboard package is installed
    seed: int = 0

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be {' or '.join(PARALLEL)}, not {self.parallel!r}")
        if self.steps < 1 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ValueError("steps and grad_accum must be >= 1, warmup_steps >= 0")


class Task(Protocol):
    """What a trainable thing supplies. ``loss`` must call ``model(...)`` (forward), so DDP syncs."""

    def build_model(self) -> nn.Module: ...

    def train_batches(self, start_step: int, rank: int, world_size: int) -> Iterator[Any]:
        """Batches for micro-steps ``start_step * grad_accum`` on: the same every time (exact resume)."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """-> (loss, logs); logged tensors (detached) are read only at log steps, saving host syncs."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of the unwrapped model (run on the main process)."""

    # optional: ``after_step(model, step)``, called with the unwrapped model after optimizer step ``step``
    # (1-based), for what an optimizer cannot express (a staged unfreezing keeping part of a tensor fixed)


def lr_lambda(cfg: TrainConfig):
    def fn(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def has_compiler(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build kernels for ``device``: on a CPU, inductor needs a C++ compiler."""
    if device.type != "cpu":
        return True
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True


def check_compiler(device: torch.device) -> None:
    """Without a compiler ``torch.compile`` would fail deep in the first step; say so before the run starts."""
    if not has_compiler(device):
        raise ValueError("train.use_compile on a CPU needs a C++ compiler (torch's inductor builds its kernels "
                         "with one, e.g. g++): install one, or set train.use_compile=false")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on gains, biases and other vectors (nanoGPT's rule: decay what has 2+ dims)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def train(task: Task, cfg: TrainConfig, out: str | os.PathLike, resume: bool = True,
          progress: bool = True, record: Any = None) -> nn.Module:
    """Train ``task`` for ``cfg.steps`` optimizer steps into ``out``; return the unwrapped model.

    ``record`` (the run's whole config, a dataclass) is written to ``out/config.yaml``, but only once
    the checkpoint to resume from is known to fit the model: a run's record never describes a model
    its checkpoints do not hold.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs  # heavy: only when training

    out = Path(out)
    torch.manual_seed(cfg.seed)
    # modalities absent from a batch leave their tables and heads without gradients: DDP must know
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True where there is no accelerator: without it, accelerate (1.16) starts each process of a
    # CPU launch on its own (no process group), and they train apart while looking like a DDP run
    accelerator = Accelerator(cpu=not torch.accelerator.is_available(), kwargs_handlers=[ddp])
    # Precision is our autocast, not accelerate's: its state is a per-process singleton that refuses
    # a second run with another precision (tests, notebooks), and bf16 needs no loss scaling. With
    # several processes the main one's timing decides for all: each timing its own could differ.
    decision = [resolve_precision(cfg.precision, accelerator.device) == "bf16"]
    if accelerator.num_processes > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
    use_bf16 = decision[0]
    if accelerator.device.type == "cpu":  # tensors on the host: reuse freed memory, not fault it in anew
        retain_freed_memory()
    # attention's kernel is decided before any compiled code runs, which then only reads it (for the training
    # steps and for the held-out evaluation under no_grad: timed inside a compiled block, the timing broke
    # its graph at every evaluation)
    for backward in (True, False):
        attention_kernel(accelerator.device, torch.bfloat16 if use_bf16 else torch.float32, backward)
    def autocast():
        return torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=use_bf16)
    if cfg.use_compile:
        check_compiler(accelerator.device)
    sharded = cfg.parallel == "fsdp" and accelerator.num_processes > 1  # one process has nothing to shard

    def build() -> nn.Module:
        model = task.build_model()
        if cfg.use_activation_checkpointing:
            if not hasattr(model, "checkpoint_activations"):
                raise ValueError(f"train.use_activation_checkpointing: {type(model).__name__} does not say what to "
                                 "recompute (it has no checkpoint_activations method)")
            model.checkpoint_activations()
        return model

    if sharded:  # before the optimizer: it must hold the shards, not the whole parameters
        model = build_sharded(build, accelerator.device, accelerator.is_main_process, cfg.use_compile)
    else:
        model = build().to(accelerator.device)
        if cfg.use_compile:  # in place, before DDP wraps it; a model may choose what to compile (FourM: its blocks)
            model.compile()
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step = resume_checkpoint(out, model, optimizer, scheduler) if resume else 0
    if record is not None and accelerator.is_main_process:
        save_config(record, out / "config.yaml")
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step, enabled=accelerator.is_main_process,
                         tensorboard=out / "tensorboard" if cfg.use_tensorboard else None)

    batches = task.train_batches(step, accelerator.process_index, accelerator.num_processes)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or not accelerator.is_main_process,
               desc=type(task).__name__, unit="step")
    window, tick = [], time.perf_counter()
    while step < cfg.steps:
        model.train()
        for micro in range(cfg.grad_accum):  # gradients are reduced over processes on the last only
            with gradient_sync(model, micro == cfg.grad_accum - 1), autocast():
                loss, logs = task.loss(model, next(batches))
            (loss / cfg.grad_accum).backward()
        if cfg.grad_clip > 0:
            # the norm here; the scaling inside a fused AdamW's own pass (fourm.train.clipping)
            logs["grad_norm"] = local(clip_gradients(model.parameters(), optimizer, cfg.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        if hasattr(task, "after_step"):
            task.after_step(accelerator.unwrap_model(model), step)
        # tensors stay on the device until a log step: one host sync per log_every steps, not per step
        window.append({"loss": loss.detach(), **logs})
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            row = {k: sum(float(w.get(k, 0.0)) for w in window) / len(window) for k in window[-1]}
            row.update(step=step, lr=scheduler.get_last_lr()[0], s_per_step=(now - tick) / len(window))
            metrics.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            window, tick = [], now
        bar.update(1)
        last = step == cfg.steps
        # a sharded model's forward gathers weights from every process: all of them evaluate, one logs
        if ((cfg.eval_every and step % cfg.eval_every == 0) or last) and (sharded or accelerator.is_main_process):
            model.eval()
            # eager even where the model is compiled: an evaluation is a few batches every eval_every steps,
            # and compiling its no-grad graphs cost more than it saved (demo: 17 s cold, 0.2 s eager)
            with torch.no_grad(), autocast(), torch.compiler.set_stance("force_eager"):
                scores = task.evaluate(accelerator.unwrap_model(model))
            metrics.write({"step": step, **{f"eval/{k}": v for k, v in scores.items()}})
            if accelerator.is_main_process:
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        if (cfg.save_every and step % cfg.save_every == 0) or last:
            metrics.flush()
            accelerator.wait_for_everyone()
            save_checkpoint(out, step, accelerator.unwrap_model(model), optimizer, scheduler, cfg.keep_last,
                            main=accelerator.is_main_process)
    bar.close()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    if sharded:  # the whole weights, gathered onto the main process, in a plain model
        weights = model_state(model, full=True)
        if accelerator.is_main_process:
            final = build()
            final.load_state_dict(weights)
    if accelerator.is_main_process:
        final.save_pretrained(out / "model")
        metrics.plot(out / "curves.png")
        write_json(out / "summary.json", metrics.last)
    metrics.close()
    return final
