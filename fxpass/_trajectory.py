"""Train two models side by side, one optimizer step at a time, comparing them after each step.

The one trainer of the parity harness: :func:`fxpass.parity.check` runs it on fresh copies, once
per mode, and :func:`fxpass.parity.side_by_side` on the models it is given, along any sequence of
modes. A step resets the gradients, seeds the RNGs identically before each model's forward (so
dropout draws the same masks), compares the outputs, backpropagates the loss, compares the
gradients of the parameters and of the inputs, steps both optimizers and compares parameters and
buffers. A failing candidate gives failing rows and ends the trajectory; a failing reference
raises.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fxpass.comparison import Comparison, compare_all, error_text, flat, flatten, listing, sequence_difference
from fxpass.parity_report import ParityRow

__all__ = ["LossFn", "OptimizerFactory", "Settings", "Trajectory", "rng_restored", "row", "state_dict_rows", "train"]

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[Any], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every step of a trajectory needs.

    Attributes:
        inputs: the positional arguments of the forward.
        kwargs: its keyword arguments.
        loss_fn: output -> scalar loss.
        optimizer: parameter list -> optimizer.
        atol: absolute tolerance (0 with ``rtol`` 0: bitwise).
        rtol: relative tolerance.
        seed: the RNGs' seed before step ``i`` is ``seed + i``.
        inputs_error: how a reference failing on the inputs is reported: (error, where) -> the
            exception to raise.
        progress: called with a few words before each step.
    """

    inputs: tuple[Any, ...]
    kwargs: dict[str, Any]
    loss_fn: LossFn
    optimizer: OptimizerFactory
    atol: float
    rtol: float
    seed: int
    inputs_error: Callable[[Exception, str], Exception]
    progress: Callable[[str], None] | None = None

    def seed_for(self, step: int) -> None:
        seed_everything(self.seed + step)

    def fresh_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """New copies of the example inputs, so one model's in-place edits cannot reach another."""
        return fresh(self.inputs), fresh(self.kwargs)

    def call(self, module: nn.Module) -> Any:
        """``module`` on fresh copies of the example inputs."""
        args, kwargs = self.fresh_inputs()
        return module(*args, **kwargs)

    def compare(self, reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> Comparison:
        return compare_all(reference, candidate, self.atol, self.rtol)

    def tell(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def row(name: str, result: Comparison | None = None, *, passed: bool | None = None, detail: str = "") -> ParityRow:
    """A row: a tensor comparison, or a verdict with its detail."""
    if result is not None:
        return ParityRow(name, result.passed, result.bitwise, result.max_abs, result.max_rel, result.detail)
    assert passed is not None
    return ParityRow(name, passed, passed, None, None, detail)


@dataclasses.dataclass
class Trajectory:
    """What :func:`train` found: its rows, and each step's forward seconds (reference, candidate)."""

    rows: list[ParityRow] = dataclasses.field(default_factory=list)
    seconds: list[tuple[float, float]] = dataclasses.field(default_factory=list)


def train(settings: Settings, reference: nn.Module, candidate: nn.Module, modes: Sequence[str], end: str) -> Trajectory:
    """One optimizer step of each model per entry of ``modes`` (``"train"`` or ``"eval"``).

    Rows are named ``<mode>/step<i>/<what>`` (``i`` counts from 1 along ``modes``), then
    ``<end>/param_names`` and ``<end>/state_dict/...`` after the last step. Both models are
    switched to a step's mode where it differs from the step before (before the first step, to
    its mode), as a training loop switches: a forward that changes a module's mode is seen by the
    next step of the same mode.
    """
    ran = Trajectory()
    optimizers: tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None] | None = None
    names_failure = ""
    for step, mode in enumerate(modes, start=1):
        prefix = f"{mode}/step{step}"
        settings.tell(f"{mode} step {step}/{len(modes)}")
        for module in (reference, candidate):
            if step == 1 or modes[step - 2] != mode:
                module.train(mode == "train")
            for parameter in module.parameters():
                parameter.grad = None
        inputs_r, inputs_c = settings.fresh_inputs(), settings.fresh_inputs()
        settings.seed_for(step)
        start = time.perf_counter()
        try:
            out_r = reference(*inputs_r[0], **inputs_r[1])
        except Exception as e:
            raise settings.inputs_error(e, f" (at {prefix})") from e
        middle = time.perf_counter()
        settings.seed_for(step)
        start_c = time.perf_counter()
        try:
            out_c = candidate(*inputs_c[0], **inputs_c[1])
        except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
            ran.rows.append(row(f"{prefix}/output", passed=False, detail=f"candidate raised {error_text(e)}"))
            break
        ran.seconds.append((middle - start, time.perf_counter() - start_c))
        ran.rows.append(_output_row(f"{prefix}/output", settings, out_r, out_c))

        names_r = [n for n, _ in reference.named_parameters()]
        names_c = [n for n, _ in candidate.named_parameters()]
        if not names_failure and names_r != names_c:
            names_failure = f"at step {step}: " + sequence_difference(names_r, names_c, "parameters")

        if optimizers is None:  # (after the first forward: transforms may create parameters lazily)
            optimizers = (_make_optimizer(settings.optimizer, reference), _make_optimizer(settings.optimizer, candidate))
        else:
            for optimizer, module in zip(optimizers, (reference, candidate)):
                _add_new_parameters(optimizer, module)

        grad_error = _backward(settings.loss_fn, out_r, out_c)
        if grad_error:
            ran.rows.append(row(f"{prefix}/grad", passed=False, detail=grad_error))
        else:
            ran.rows.append(row(f"{prefix}/grad", settings.compare(_grads(reference, *inputs_r), _grads(candidate, *inputs_c))))

        step_error = _step(optimizers)
        if step_error:
            ran.rows.append(row(f"{prefix}/params", passed=False, detail=step_error))
            break
        for what, tensors in (("params", nn.Module.named_parameters), ("buffers", nn.Module.named_buffers)):
            ran.rows.append(row(f"{prefix}/{what}", settings.compare(dict(tensors(reference)), dict(tensors(candidate)))))

    ran.rows.append(row(f"{end}/param_names", passed=not names_failure, detail=names_failure))
    ran.rows.extend(state_dict_rows(settings, f"{end}/state_dict", reference, candidate))
    return ran


def _output_row(name: str, settings: Settings, out_r: Any, out_c: Any) -> ParityRow:
    """The outputs' values, and which of their tensors require grad: a candidate whose output
    needs a gradient where the reference's does not would train what the reference freezes."""
    leaves_r, leaves_c = flat(out_r, "output"), flat(out_c, "output")
    result = settings.compare(leaves_r, leaves_c)
    needing = [
        [path for path, leaf in leaves.items() if isinstance(leaf, torch.Tensor) and leaf.requires_grad]
        for leaves in (leaves_r, leaves_c)
    ]
    if needing[0] == needing[1]:
        return row(name, result)
    only = (
        (who, [p for p in paths if p not in other])
        for who, paths, other in (("reference", needing[0], needing[1]), ("candidate", needing[1], needing[0]))
    )
    detail = "; ".join(f"requires grad in the {who} only: {listing(paths)}" for who, paths in only if paths)
    return ParityRow(name, False, result.bitwise, result.max_abs, result.max_rel, detail)


def _backward(loss_fn: LossFn, out_r: Any, out_c: Any) -> str:
    """Backpropagate both losses (when the reference's requires grad); what went wrong, or ""."""
    loss_r = loss_fn(out_r)
    if not (isinstance(loss_r, torch.Tensor) and loss_r.requires_grad):
        return ""
    loss_r.backward()
    try:
        loss_c = loss_fn(out_c)
        if not (isinstance(loss_c, torch.Tensor) and loss_c.requires_grad):
            return "the candidate's loss does not require grad; nothing to backpropagate"
        loss_c.backward()
    except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
        return f"candidate backward raised {error_text(e)}"
    return ""


def _step(optimizers: tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None]) -> str:
    """Step both optimizers; what the candidate's raised, or "" (the reference's propagates)."""
    reference, candidate = optimizers
    if reference is not None:
        reference.step()
    if candidate is not None:
        try:
            candidate.step()
        except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
            return f"candidate optimizer step raised {error_text(e)}"
    return ""


def state_dict_rows(settings: Settings, prefix: str, reference: nn.Module, candidate: nn.Module) -> list[ParityRow]:
    """``state_dict()``: the keys, their order and their values."""
    try:
        state_c = candidate.state_dict()
    except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
        return [row(f"{prefix}/keys", passed=False, detail=f"candidate state_dict() raised {error_text(e)}")]
    state_r = reference.state_dict()
    keys_r, keys_c = list(state_r), list(state_c)
    missing = [k for k in keys_r if k not in state_c]
    extra = [k for k in keys_c if k not in state_r]
    detail = "; ".join(
        f"{what} in candidate: {listing(keys)}" for what, keys in (("missing", missing), ("extra", extra)) if keys
    )
    common_r = [k for k in keys_r if k in state_c]
    common_c = [k for k in keys_c if k in state_r]
    order = "" if common_r == common_c else sequence_difference(common_r, common_c, "keys")
    return [
        row(f"{prefix}/keys", passed=not detail, detail=detail),
        row(f"{prefix}/order", passed=not order, detail=order),
        row(f"{prefix}/values", settings.compare(state_r, state_c)),
    ]


# -- helpers ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and numpy (when installed): models draw from all three
    (dropout; wav2vec2-style masks are drawn with numpy)."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


@contextlib.contextmanager
def rng_restored() -> Iterator[None]:
    """Within the block the global RNGs of torch, Python and numpy may be reseeded; after it
    they are as they were."""
    state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(state)
        if numpy is not None and numpy_state is not None:
            numpy.random.set_state(numpy_state)


def fresh(value: Any) -> Any:
    """A copy of nested inputs with new tensors, so one model's in-place edits cannot reach another."""
    if isinstance(value, torch.Tensor):
        copied = value.detach().clone()
        if copied.is_floating_point() or copied.is_complex():
            copied.requires_grad_(value.requires_grad)
        return copied
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(fresh(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(fresh(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, fresh(v)) for k, v in value.items())
    return copy.deepcopy(value)


def _grads(module: nn.Module, args: Any, kwargs: Any) -> dict[str, Any]:
    grads: dict[str, Any] = {name: p.grad for name, p in module.named_parameters()}
    for path, leaf in [*flatten(args, "inputs"), *flatten(kwargs, "kwargs")]:
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            grads[path] = leaf.grad
    return grads


def _make_optimizer(factory: OptimizerFactory, module: nn.Module) -> torch.optim.Optimizer | None:
    params = list(module.parameters())
    return factory(params) if params else None


def _add_new_parameters(optimizer: torch.optim.Optimizer | None, module: nn.Module) -> None:
    if optimizer is None:
        return
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    new = [p for p in module.parameters() if id(p) not in known]
    if new:
        optimizer.add_param_group({"params": new})
