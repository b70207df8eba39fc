"""Data-parallel training over processes that `torchrun` starts: which rank this process is, and the few
collectives the training loop and the agent need. Without torchrun (no WORLD_SIZE above 1 in the environment)
there is one rank and nothing here talks to another process.

Every rank runs the same loop on its own envs and replay shard. The ranks meet once per env step (`Ranks.sum`:
the env steps of all ranks, and whether any rank was told to stop), once per update (`Ranks.average`: the
gradients, so that every rank takes the same optimizer step and the weights stay equal), and at log,
evaluation and checkpoint time (`Ranks.gather`, `Ranks.share`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# How long a collective waits for the other ranks. Rank 0 evaluates while the others wait in the next collective,
# and an evaluation of long episodes can take many minutes. A rank that dies does not make the others wait this
# long: torchrun sees its process end and stops the rest, and a collective with a dead peer fails at once.
TIMEOUT = timedelta(hours=2)


class PeerLost(Exception):
    """A collective failed: another rank of the job ended (it died, or torchrun stopped it)."""


def launched() -> bool:
    """Whether this process is one of several that torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world` processes, `local` on its machine. `Ranks()` is the
    single-process run, whose collectives return their input."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: it owns the run directory, logs, evaluates and writes the checkpoint and `model.pt`."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (`local`) on a machine with several, where `device` names no index."""
        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local % torch.cuda.device_count())
        return device

    def average(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor (on one device, float32) by its mean over the ranks, in one collective."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])  # (sum of numels,)
        _collective(dist.all_reduce, flat)
        flat /= self.world
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            t.copy_(part.view_as(t))

    def concat(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' tensors (the same shape on every rank) joined along the first axis, in rank order."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        _collective(dist.all_gather, parts, tensor.contiguous())
        return torch.cat(parts)

    def sum(self, values: list[int]) -> list[int]:
        """Integers summed over the ranks (on the host: one small collective)."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.int64)
        _collective(dist.all_reduce, total)
        return total.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's picklable `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        _collective(dist.all_gather_object, out, value)
        return out

    def collect(self, value: Any) -> list[Any] | None:
        """Every rank's picklable `value`, in rank order, on rank 0; None on the others."""
        if self.world == 1:
            return [value]
        out: list[Any] | None = [None] * self.world if self.main else None
        _collective(dist.gather_object, value, out, dst=0)
        return out

    def share(self, value: Any) -> Any:
        """Rank 0's picklable `value`, on every rank (the others' `value` is ignored)."""
        if self.world == 1:
            return value
        box = [value]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]


SINGLE = Ranks()  # the single-process run


def _collective(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:  # gloo and nccl report a peer's end as either
        raise PeerLost(_reason(e)) from None


def _reason(error: Exception) -> str:
    """The gist of a backend's error: its first sentence, without the source location gloo puts first."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split("] ", 1)[-1].split(". ")[0]


def absent(ranks: Ranks, wait: float = 2.0) -> list[int]:
    """After a collective failed: the ranks that do not answer within `wait` seconds, found through the job's
    key-value store (torchrun's rendezvous store, which outlives the ranks). Every rank that is still alive marks
    itself there; the ones missing have ended (or hang). Empty if the store cannot tell."""
    try:
        store = dist.distributed_c10d._get_default_store()
        key = f"rssm/alive/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        store.set(f"{key}/{ranks.rank}", "1")
        deadline = time.monotonic() + wait
        while True:
            missing = [r for r in range(ranks.world) if not store.check([f"{key}/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the store went with the job: nothing to tell
        return []


def start() -> Ranks:
    """Join the job torchrun started (once per process), or `Ranks()` without torchrun. CPU tensors travel over
    gloo and, where CUDA and NCCL are present, CUDA tensors over NCCL."""
    if not launched():
        return Ranks()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def stop(together: bool) -> None:
    """Leave the job (at the end of a process that `start` joined). `together`: after a run that ended well on
    every rank, the ranks wait for each other and the process ends with status 0 at once."""
    if not dist.is_initialized():
        return
    if together:
        _collective(dist.barrier)
        # Every rank is done with the others: end the process here. Tearing down gloo's connections at
        # interpreter exit aborted a rank now and then (std::terminate, SIGABRT) after a run that had ended well.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    dist.destroy_process_group()
