"""Pieces every training loop shares: device and precision, seeded loaders, AdamW with cosine
warm-up, finite-loss checks, and the per-epoch checkpoint/training-state files used by resume."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from biosig.errors import ConfigError, TrainingError

TRAINING_STATE_FILE = "training_state.pt"


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {device!r} but no CUDA device is available")
    return torch.device(device)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """amp=auto: bf16 on CUDA, fp32 on CPU; amp=bf16 forces bf16 autocast (CPU too); amp=off: fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def loader(arrays: Iterable[np.ndarray], batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
           drop_last: bool = False, dist: "Distributed | None" = None, seed: int = 0) -> DataLoader:
    """Batches of tensors; under multi-process training (`dist.active`) each process gets its shard
    (DistributedSampler, reshuffled per epoch by `set_epoch`)."""
    dataset = TensorDataset(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    if dist is not None and dist.active:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in multi-process training started by torchrun (WORLD_SIZE, RANK, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, spec: str) -> torch.device:
        device = resolve_device(spec)
        return torch.device("cuda", self.local_rank) if self.active and device.type == "cuda" else device

    def mean(self, total: float, count: int) -> float:
        """sum(total) / sum(count) over all processes."""
        return self.mean_and_count(total, count)[0]

    def mean_and_count(self, total: float, count: int) -> tuple[float, int]:
        """(sum(total) / sum(count), sum(count)) over all processes."""
        if not self.active:
            return total / count, count
        values = torch.tensor([total, float(count)], dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(values)
        return float(values[0] / values[1]), int(values[1])

    def from_leader(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every process: decisions every process must share."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def _collective_device(self) -> torch.device:
        """NCCL collectives take CUDA tensors; gloo takes CPU ones."""
        on_nccl = torch.distributed.get_backend() == "nccl"
        return torch.device("cuda", self.local_rank) if on_nccl else torch.device("cpu")

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


@contextlib.contextmanager
def distributed(device: str) -> Iterator[Distributed]:
    """A process group when started by torchrun with more than one process (gloo on CPU, nccl on CUDA);
    a single-process Distributed() otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not torch.distributed.is_available():
        yield Distributed()
        return
    info = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    on_cuda = info.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(info.local_rank)
    torch.distributed.init_process_group("nccl" if on_cuda else "gloo")
    try:
        yield info
    finally:
        torch.distributed.destroy_process_group()


def optimizer_and_schedule(groups: list[dict[str, Any]], lr: float, weight_decay: float, total_steps: int,
                           warmup_fraction: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + linear warm-up then cosine decay to zero over `total_steps`."""
    for group in groups:
        group.setdefault("weight_decay", weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()} at {where}: lower lr, check the data for extreme "
                            "values, or set amp=off")


def step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, grad_clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / TRAINING_STATE_FILE)


def load_training_state(directory: Path) -> dict[str, Any]:
    path = directory / TRAINING_STATE_FILE
    if not path.is_file():
        raise TrainingError(f"{directory} has no {TRAINING_STATE_FILE}: nothing to resume from")
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, or objects weights_only refuses
        raise TrainingError(f"{path} cannot be read ({type(exc).__name__}); the upload of last/ was "
                            "interrupted or the file is damaged") from None


@dataclasses.dataclass
class TrainingProgress:
    """Where a training run stands, for both loops: the epoch reached, the best epoch by a higher-is-better
    score (pretrain: -val_loss; finetune: the selection metric) and the per-epoch history. It is what
    `last/` saves for resume and what history.json holds."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def record(self, row: dict[str, Any], score: float) -> bool:
        """Append this epoch's row; True when it is the best so far (the first epoch always is)."""
        self.history.append({"epoch": self.epoch, **row})
        if score > self.best_score or self.best_epoch == 0:
            self.best_epoch, self.best_score = self.epoch, score
            return True
        return False

    def best_row(self) -> dict[str, Any]:
        return next((row for row in self.history if row["epoch"] == self.best_epoch), {})


PROGRESS_AFTER_S = 5.0


def progress_bar(batches: Iterable, where: str) -> Iterable:
    """tqdm over the batches of a slow epoch, shown only on an interactive terminal of rank 0."""
    quiet = not sys.stderr.isatty() or os.environ.get("RANK", "0") != "0"
    return tqdm(batches, desc=f"  {where}", unit="batch", delay=PROGRESS_AFTER_S, leave=False, disable=quiet,
                dynamic_ncols=True)


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, scheduler,
                loss_of: Callable[[list[torch.Tensor]], torch.Tensor], *, device: torch.device, amp: str,
                grad_clip: float, where: str, totals: tuple[float, int] = (0.0, 0),
                after_step: Callable[[list[torch.Tensor], float, int], None] | None = None) -> tuple[float, int]:
    """The one training pass both loops use: each batch moved to `device`, `loss_of(batch)` under autocast,
    a finite-loss check naming `where` and the step, one optimiser step. Returns (loss sum, examples);
    the caller averages (across processes under torchrun). A progress bar appears on a terminal once the
    epoch has run PROGRESS_AFTER_S seconds (never in logs, pipes or non-leader processes). `totals` continues
    an epoch resumed mid-way; `after_step(batch, loss sum, examples)` runs after each optimiser step."""
    total, count = totals
    for i, batch in enumerate(progress_bar(batches, where)):
        batch = [t.to(device, non_blocking=True) for t in batch]
        with autocast(device, amp):
            loss = loss_of(batch)
        check_finite(loss, f"{where} step {i + 1}")
        step(model, loss, optimizer, scheduler, grad_clip)
        total += loss.item() * len(batch[0])
        count += len(batch[0])
        if after_step is not None:
            after_step(batch, total, count)
    return total, count
