"""Joining the torch.distributed process group that torchrun describes, and collectives that
fail with a clear error instead of hanging.

torchrun (or any launcher) sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the group uses
gloo on the CPU and NCCL when clients train on GPUs (one GPU per rank, LOCAL_RANK). Every
collective waits at most the configured timeout: a rank that died makes the others fail at
once (its sockets close), a rank that hangs makes them fail when the timeout expires.
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """The process group could not be joined, or a collective failed (a rank died or timed out)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group, and the collectives the distributed engine uses."""

    rank: int
    world_size: int
    device: torch.device  # where collective tensors live: the rank's GPU under NCCL, else the CPU
    timeout_s: float

    def all_reduce(self, tensor: Tensor, what: str, *, op: str = "sum") -> Tensor:
        """The elementwise sum (or "max") of `tensor` over all ranks (a new CPU tensor)."""
        buf = tensor.to(self.device, copy=True)
        reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        self._run(lambda: dist.all_reduce(buf, op=reduce_op), what)
        return buf.cpu()

    def all_gather_object(self, obj: Any, what: str) -> list[Any]:
        """Every rank's `obj`, in rank order (small picklable objects only)."""
        out: list[Any] = [None] * self.world_size
        self._run(lambda: dist.all_gather_object(out, obj), what)
        return out

    def _run(self, collective, what: str) -> None:
        try:
            collective()
        except RuntimeError as exc:  # gloo and NCCL report lost peers and timeouts as RuntimeErrors
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank has most likely died, or did "
                f"not answer within train.dist_timeout_s = {self.timeout_s:g} s (see that rank's log). Resume from "
                f"the last checkpoint with `fedbrb-fast run --resume <output_dir>`, on any number of ranks. "
                f"Cause: {exc}"
            ) from None


def join_process_group(train_device: torch.device, timeout_s: float) -> Ranks:
    """The process group this process belongs to: an existing one, the one the torchrun
    environment describes, or, with neither, a lone process (world size 1, with a warning)."""
    if dist.is_available() and dist.is_initialized():
        return _ranks(timeout_s)
    present = [v for v in TORCHRUN_ENV if v in os.environ]
    if not present:
        warnings.warn("train.engine = 'distributed' without a torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, "
                      "MASTER_PORT unset): running as a single process (world size 1). Launch with "
                      "`torchrun --nproc_per_node=N -m fedbrb_fast.cli run ...` to use N processes.",
                      RuntimeWarning, stacklevel=2)
        return Ranks(0, 1, torch.device("cpu"), timeout_s)
    if len(present) < len(TORCHRUN_ENV):
        missing = sorted(set(TORCHRUN_ENV) - set(present))
        raise DistributedError(f"incomplete torchrun environment: {', '.join(missing)} unset "
                               f"(set all of {', '.join(TORCHRUN_ENV)}, or launch with torchrun)")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; the distributed engine cannot run")
    backend = "nccl" if train_device.type == "cuda" else "gloo"
    if backend == "nccl":  # one GPU per rank: the batched engine's "cuda" is the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: could not join the {backend} process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within train.dist_timeout_s = {timeout_s:g} s "
            f"(are all ranks started, with the same MASTER_ADDR/MASTER_PORT?): {exc}") from None
    atexit.register(_leave)
    return _ranks(timeout_s)


def is_main_process() -> bool:
    """Rank 0 (the process that writes outputs): of the joined group, else of the torchrun
    environment, else the lone process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _ranks(timeout_s: float) -> Ranks:
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return Ranks(dist.get_rank(), dist.get_world_size(), device, timeout_s)


def _leave() -> None:
    """Leave the group we joined at exit, also after a failed collective: shutting it down aborts
    what is pending, where leaving it to the destructors may abort the process (SIGABRT)."""
    if dist.is_initialized():
        dist.destroy_process_group()
