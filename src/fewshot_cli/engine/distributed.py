"""Meta-training across processes: ``torchrun`` starts them, ``torch.distributed`` joins them.

One run, N processes (ranks). Each rank samples its share of the meta-batch from its
own task generator (seeded from the run's seed and the rank), adapts its tasks and
back-propagates its share of the outer loss; the meta-gradients are then summed across
ranks, each rank's weighted by its share of the meta-batch, in one explicit all-reduce
of one flat buffer (:meth:`Sync.gradients`), so every rank takes the same meta-update
and the parameters stay identical without ever being broadcast again.

Why not ``DistributedDataParallel``: its reducer hooks the parameters' ``.grad``
accumulation of one ``backward`` of one ``forward``. Here the parameters reach the loss
through ``torch.func`` transforms of a functional inner loop, some algorithms take
several backward-like passes or none (Reptile's meta-update is not a loss gradient,
the meta-LSTM clips the global gradient norm, which must be the norm of the *averaged*
gradient), and the batch-norm statistics of MAML++ are buffers that need an average of
their own. One all-reduce after ``backward`` covers every algorithm with a line in the
base class, is easy to test for equality with one process, and costs the same bytes.

Only rank 0 writes the run directory. Everything that decides the numbers (the
batching path, thread count, what stops the run) is decided once on rank 0 or agreed
on through a collective; no collective waits longer than ``train.dist_timeout``.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from ..errors import AgreedError, FewshotError

#: Added to the seed of rank r > 0's task generator and torch RNG, times r (rank 0 keeps
#: the run's seed, so a one-process run samples the tasks its seed names).
RANK_SEED_STRIDE = 7_919_000_003


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams, in int64."""
    return (seed + rank * RANK_SEED_STRIDE) % 2**63


def share(total: int, rank: int, world: int) -> int:
    """How many of ``total`` tasks rank ``rank`` of ``world`` samples (the first
    ``total % world`` ranks take one more)."""
    return total // world + (1 if rank < total % world else 0)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Sync:
    """What an algorithm and the trainer need of the process group. The default is one
    process: every method is the identity."""

    rank: int = 0
    world: int = 1
    weight: float = 1.0  # this rank's share of the meta-batch, over the meta-batch

    def split(self, total: int) -> int:
        """This rank's share of a meta-batch of ``total`` tasks (:func:`share`); from now on
        the gradient and metric averages weight this rank by it."""
        n = share(total, self.rank, self.world)
        self.weight = n / total
        return n

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gradients(self, module: nn.Module) -> None:
        """Replace every parameter's ``.grad`` by the meta-batch-weighted sum over ranks
        (one all-reduce of one flat buffer). A parameter without a gradient counts as
        zero; it keeps ``None`` if no rank gave it one."""
        if not self.active:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            return
        present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params])
        flat = torch.cat([present.to(params[0].device, params[0].dtype)] + [
            (torch.zeros_like(p) if p.grad is None else p.grad * self.weight).flatten()
            for p in params])
        dist.all_reduce(flat)
        seen, offset = flat[:len(params)], len(params)
        for i, p in enumerate(params):
            n = p.numel()
            if seen[i] > 0:
                p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def mean(self, tensors: Iterable[torch.Tensor], flags: Iterable[bool] = ()
             ) -> tuple[list[torch.Tensor], list[bool]]:
        """Each tensor's meta-batch-weighted mean over ranks, and each flag, true where it
        is true on any rank: one all-reduce for both."""
        tensors, flags = list(tensors), list(flags)
        if not self.active:
            return tensors, flags
        parts = [t.detach().cpu().to(torch.float64).flatten() * self.weight for t in tensors]
        parts.append(torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float64))
        flat = torch.cat(parts)
        if backend() == "nccl":
            flat = flat.cuda()
        dist.all_reduce(flat)
        flat = flat.cpu()
        out, offset = [], 0
        for t in tensors:
            n = t.numel()
            out.append(flat[offset:offset + n].view(t.shape).to(t.device, t.dtype))
            offset += n
        return out, [bool(v > 0) for v in flat[offset:]]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


    def agree(self, error: BaseException | None) -> None:
        """A point every rank reaches with or without an ``error`` of its own; if any rank
        had one, every rank raises it (rank 0 prints it), so no rank is left waiting in a
        collective for a rank that gave up."""
        if not self.active:
            if error is not None:
                raise error
            return
        found = self.gather(None if error is None else
                            (type(error).__name__, str(error), getattr(error, "exit_code", 1)))
        for rank, item in enumerate(found):
            if item is not None:
                if rank == self.rank and error is not None and isinstance(error, FewshotError):
                    raise AgreedError(str(error), error.exit_code) from None
                raise AgreedError(f"rank {rank}: {item[1]}", item[2])

    def report_failure(self, error: str) -> None:
        """Leave this rank's error in the launcher's key-value store, where rank 0 finds it
        (:meth:`failure`) when its next collective fails: no file, no collective."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"fewshot/failure/{self.rank}", error[:2000])
        except Exception:  # noqa: BLE001 - best effort while failing
            pass

    def failure(self, wait_s: float = 3.0) -> tuple[int, str] | None:
        """The first rank that reported an error (:meth:`report_failure`), and its error,
        waiting up to ``wait_s`` for one; None if none did (a rank killed outright)."""
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001
            return None
        deadline = time.monotonic() + wait_s
        while True:
            for rank in range(self.world):
                key = f"fewshot/failure/{rank}"
                try:
                    if rank != self.rank and store.check([key]):
                        return rank, store.get(key).decode(errors="replace")
                except Exception:  # noqa: BLE001 - the store went away with the launcher
                    return None
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


#: (host, pid) of every rank of this process's group, in rank order.
_PEERS: list[tuple[str, int]] = []


def start(timeout_s: float, backend: str = "gloo", device: torch.device | None = None
          ) -> Sync:
    """Join the process group ``torchrun`` describes in the environment, over ``backend``
    (``gloo``: CPU, or GPUs shared by processes; ``nccl``: one GPU per process), with
    collectives that give up after ``timeout_s``."""
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **kwargs)
    sync = Sync(dist.get_rank(), dist.get_world_size())
    _PEERS[:] = sync.gather((socket.gethostname(), os.getpid()))
    return sync


def peers() -> list[tuple[str, int]]:
    """(host, pid) of every rank, in rank order (empty in one process)."""
    return list(_PEERS)


def gone_ranks() -> list[int]:
    """The ranks on this host whose process no longer exists."""
    host, out = socket.gethostname(), []
    for rank, (h, pid) in enumerate(_PEERS):
        if h != host:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            out.append(rank)
        except PermissionError:
            pass
    return out


def stop(clean: bool = False) -> None:
    """Leave the process group. ``clean``: every rank finished its work, so all meet at a
    barrier first and none closes its connections while another is still reading from
    them (gloo could abort that rank at exit); otherwise (a rank failed or died) leave
    without waiting for the others."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - a rank gone at the very end: leave anyway
                pass
        dist.destroy_process_group()


def leave_process(code: int) -> NoReturn:
    """End a ``torchrun`` rank that has left its process group, skipping the interpreter's
    teardown. A rank exiting normally after ``destroy_process_group`` aborted now and then
    (about 1 exit in 30 here under load; CI once) with "terminate called without an
    active exception" and no Python frame left: a C++ object of torch's with a running
    thread destroyed during finalization. Output is flushed first; every file the run
    writes is closed (atomically replaced) by then."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing to flush
            pass
    logging.shutdown()
    os._exit(code)


def backend() -> str | None:
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
