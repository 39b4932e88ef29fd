"""A compiled model travels to spawned workers by pickling and trains there under
DistributedDataParallel (gloo, 2 CPU ranks); the runtime-patched model cannot make the trip.

The all-reduced gradients are compared with ``torch.testing.assert_close`` (atol 1e-6, rtol 1e-5),
not bitwise: each rank sums its half of the batch and gloo then adds the two halves, an order of
floating-point additions that differs from one process summing the whole batch.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fxpass
from fxpass import zoo
from imitation_runtime import ImitationPicklingError, is_imitated

WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # mean over the batch: DDP averages the ranks' gradients, so the mean over two equal halves
    # equals the mean over the whole batch
    return nn.functional.mse_loss(output, target)


def _train_one_step(
    rank: int, model: nn.Module, port: int, inputs: torch.Tensor, targets: torch.Tensor, out: str
) -> None:
    """Worker: one DDP step on this rank's half of the batch; rank 0 saves the reduced gradients.

    torch.multiprocessing passes CPU tensors through shared memory, so each rank trains its own
    copy, as a real job's ranks would (and the parent's model stays as it was sent).
    """
    model = copy.deepcopy(model)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        half = inputs.shape[0] // WORLD_SIZE
        rows = slice(rank * half, (rank + 1) * half)
        _loss(ddp(inputs[rows]), targets[rows]).backward()
        if rank == 0:
            grads = {name: p.grad.detach().clone() for name, p in ddp.module.named_parameters()}
            torch.save(grads, out)
        torch.optim.SGD(ddp.parameters(), lr=0.1).step()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, _ = zoo.get("mlp").build()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 8, generator=generator)
    targets = torch.randn(8, 4, generator=generator)
    return model, inputs, targets


def test_compiled_model_trains_under_ddp_in_spawned_workers_like_the_runtime_model_close(
    tmp_path: Path,
) -> None:
    runtime, inputs, targets = _batch()
    assert any(is_imitated(m) for m in runtime.modules())
    gm = fxpass.compile(copy.deepcopy(runtime))
    sent = {name: p.detach().clone() for name, p in gm.named_parameters()}
    out = tmp_path / "grads.pt"

    mp.spawn(
        _train_one_step,
        args=(gm, _free_port(), inputs, targets, str(out)),
        nprocs=WORLD_SIZE,
        join=True,
    )

    _loss(runtime(inputs), targets).backward()
    expected = {name: p.grad for name, p in runtime.named_parameters()}
    reduced = torch.load(out)
    assert list(reduced) == list(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(reduced[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # the workers trained copies: the parent's compiled model is as it was sent
    assert all(p.grad is None for p in gm.parameters())
    assert all(torch.equal(p, sent[name]) for name, p in gm.named_parameters())


def test_runtime_patched_model_cannot_be_sent_to_spawned_workers(tmp_path: Path) -> None:
    runtime, inputs, targets = _batch()
    with pytest.raises(ImitationPicklingError, match="fxpass.compile"):
        mp.spawn(
            _train_one_step,
            args=(runtime, _free_port(), inputs, targets, str(tmp_path / "never.pt")),
            nprocs=WORLD_SIZE,
            join=True,
        )
    assert not (tmp_path / "never.pt").exists()
