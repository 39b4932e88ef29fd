"""Module boundaries: what users attach to a block works on the compiled model.

``fxpass.compile(model, boundaries=...)`` compiles each matching module into a GraphModule of its
own, in place, which the enclosing graph calls. Tested against the runtime model: FSDP2 with
``fully_shard`` per block in two spawned gloo ranks, activation checkpointing per block with
stateful transforms, hooks registered on a block after the compile, and ``torch.compile`` of
each block. Parity claims are bitwise except across ranks (see the FSDP2 test).
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

import fxpass
from fxpass import zoo
from imitation_runtime import imitate
from tests.support import Counting, assert_state_equal, forward, halve, steps_side_by_side

WORLD_SIZE = 2


class Block(nn.Module):
    """A residual block whose patched Linear has a stateful transform."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = imitate(nn.Linear(4, 4), "count", Counting())
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc(torch.relu(self.norm(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = imitate(nn.Linear(4, 2), "halve", halve)
        self.width = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net() -> Net:
    torch.manual_seed(0)
    return Net()


def test_each_block_is_a_compiled_module_of_its_own_in_place() -> None:
    model = net()
    compiled = fxpass.compile(copy.deepcopy(model), boundaries=Block)
    record = fxpass.record_of(compiled)
    assert record.boundaries == ("blocks.0", "blocks.1", "blocks.2")
    assert list(fxpass.records(compiled)) == ["", "blocks.0", "blocks.1", "blocks.2"]
    for index in range(3):
        block = compiled.blocks[index]
        assert isinstance(block, Block) and isinstance(block, torch.fx.GraphModule)
        assert fxpass.record_of(block).patched_modules == ("fc",)
    called = [n.target for n in compiled.graph.nodes if n.op == "call_module"]
    assert called == ["blocks.0", "blocks.1", "blocks.2"]  # the head is traced into the outer graph
    assert list(compiled.state_dict()) == list(model.state_dict())
    steps_side_by_side(model, compiled, (torch.randn(3, 4),), ("train", "eval", "train"))
    loaded = pickle.loads(pickle.dumps(compiled))
    assert fxpass.records(loaded).keys() == fxpass.records(compiled).keys()
    assert isinstance(loaded.blocks[0], Block)
    steps_side_by_side(model, loaded, (torch.randn(3, 4),), ("train", "eval"))


def test_boundaries_by_a_callable_and_the_outermost_match_wins() -> None:
    model = net()
    chosen = []

    def is_block_or_norm(path: str, module: nn.Module) -> bool:
        chosen.append(path)
        return isinstance(module, (Block, nn.LayerNorm))

    compiled = fxpass.compile(copy.deepcopy(model), boundaries=is_block_or_norm)
    assert fxpass.record_of(compiled).boundaries == ("blocks.0", "blocks.1", "blocks.2")  # not their norms
    assert "blocks.0.norm" not in chosen  # (not even asked: the block around it is a boundary)
    assert isinstance(compiled.blocks[0].norm, nn.LayerNorm)
    steps_side_by_side(model, compiled, (torch.randn(3, 4),))
    with pytest.raises(fxpass.InvalidModelError, match="boundaries must be a module class"):
        fxpass.compile(model, boundaries="Block")  # type: ignore[arg-type]


# -- FSDP2 ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train_sharded(
    rank: int, model: nn.Module, port: int, inputs: torch.Tensor, targets: torch.Tensor, out: str
) -> None:
    """Worker: ``fully_shard`` each block, then the root; 3 SGD steps on this rank's half of the
    batch; rank 0 saves the losses (averaged over the ranks) and the full parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model = copy.deepcopy(model)
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        half = inputs.shape[0] // WORLD_SIZE
        rows = slice(rank * half, (rank + 1) * half)
        losses = []
        for _ in range(3):
            loss = nn.functional.mse_loss(model(inputs[rows]), targets[rows])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(total / WORLD_SIZE)
        params = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
        if rank == 0:
            torch.save({"losses": losses, "params": params}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_fsdp2_shards_each_block_then_the_root_and_trains_like_one_process(tmp_path: Path) -> None:
    """FSDP2 averages the ranks' gradients: the mean over two equal halves of the batch is the
    mean over the batch, summed in another order, so the figures match to allclose (atol 1e-6,
    rtol 1e-5), not bitwise. Dropout is off (eval mode): each rank would draw its own masks."""
    runtime, _ = zoo.get("blocks").build()
    runtime.eval()
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(8, 8, generator=generator), torch.randn(8, 4, generator=generator)
    compiled = fxpass.compile(copy.deepcopy(runtime), boundaries=zoo.ResidualBlock).eval()
    out = tmp_path / "sharded.pt"
    mp.spawn(_train_sharded, args=(compiled, _free_port(), inputs, targets, str(out)), nprocs=WORLD_SIZE, join=True)
    sharded = torch.load(out)

    optimizer = torch.optim.SGD(runtime.parameters(), lr=0.1)
    for step in range(3):
        loss = nn.functional.mse_loss(runtime(inputs), targets)
        torch.testing.assert_close(sharded["losses"][step], loss.detach(), atol=1e-6, rtol=1e-5)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert list(sharded["params"]) == [name for name, _ in runtime.named_parameters()]
    for name, parameter in runtime.named_parameters():
        torch.testing.assert_close(sharded["params"][name], parameter.detach(), atol=1e-6, rtol=1e-5, msg=name)


# -- activation checkpointing, hooks, torch.compile per block ---------------------------------------


def test_activation_checkpointing_per_block_gives_bitwise_gradients() -> None:
    """Each block recomputes its forward in the backward pass: its stateful transform moves again,
    in the runtime model as in the compiled one."""
    model = net()
    compiled = fxpass.compile(copy.deepcopy(model), boundaries=Block)
    for candidate in (model, compiled):
        apply_activation_checkpointing(candidate, check_fn=lambda module: isinstance(module, Block))
    assert all(type(b).__name__ == "CheckpointWrapper" for b in compiled.blocks)
    steps_side_by_side(model, compiled, (torch.randn(3, 4),), ("train", "train", "eval", "train"))
    counters = [b.fc.count.calls for b in model.blocks], [b._checkpoint_wrapped_module.fc.count.calls for b in compiled.blocks]
    assert all(torch.equal(a, b) for a, b in zip(*counters))


def test_hooks_registered_on_a_block_after_the_compile_fire_once_per_call() -> None:
    model = net()
    compiled = fxpass.compile(copy.deepcopy(model), boundaries=Block)
    seen: dict[str, list] = {"runtime": [], "compiled": []}
    for name, candidate in (("runtime", model), ("compiled", compiled)):
        block = candidate.blocks[1]
        block.register_forward_pre_hook(lambda module, args, name=name: seen[name].append(("pre", args[0].clone())))
        block.register_forward_hook(lambda module, args, out, name=name: seen[name].append(("post", out.clone())))
    x = torch.randn(3, 4)
    for step in range(2):
        assert torch.equal(forward(model, (x,), step), forward(compiled, (x,), step))
    assert [kind for kind, _ in seen["compiled"]] == ["pre", "post"] * 2
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen["runtime"], seen["compiled"]))


def test_torch_compile_of_each_block_compiles_the_shared_code_once() -> None:
    from torch._dynamo.utils import counters

    model = net().eval()
    compiled = fxpass.compile(copy.deepcopy(model), boundaries=Block).eval()
    forwards = {type(block).forward for block in compiled.blocks}
    assert len(forwards) == 1  # identical blocks: one class, one generated forward
    x = torch.randn(3, 4)
    torch._dynamo.reset()
    counters.clear()
    for index in range(3):
        block = torch.compile(compiled.blocks[index], backend="aot_eager")
        with torch.no_grad():
            assert torch.equal(block(x), model.blocks[index](x))
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
    assert_state_equal(model, compiled)
