"""The parity harness: train a model and its candidate side by side and compare every step.

:func:`check` runs the runtime-patched model (the reference) and a candidate claimed equivalent
(by default ``fxpass.compile`` of it) through the same short training trajectory, from the same
RNG state, and compares outputs, gradients, parameters, buffers and ``state_dict()`` after every
optimizer step, then a ``torch.save`` / ``torch.load`` round trip of the candidate, and optional
probes (``torch.export``, dynamo, TorchScript). The result is a :class:`ParityReport`: one
:class:`ParityRow` per check, printable as a table and serializable as JSON.

Comparisons are bitwise (``torch.equal``) when ``atol == rtol == 0`` and ``torch.allclose``
otherwise; every row also says whether its tensors were bitwise equal and the largest absolute
and relative differences seen.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fxpass.comparison import Comparison, compare_all, error_text, flat, flatten, listing, sequence_difference
from fxpass.errors import ExampleInputsError, InvalidModelError, ParityArgumentError
from fxpass.parity_report import ParityReport, ParityRow
from fxpass.record import CompileRecord
from fxpass.record import scope_record
from fxpass.rewrite import compile as fxpass_compile
from fxpass.rewrite import records

__all__ = [
    "MODES",
    "PROBES",
    "ExampleInputsError",
    "ParityArgumentError",
    "ParityReport",
    "ParityRow",
    "check",
    "default_loss",
]

#: The modes :func:`check` can run a trajectory in.
MODES: tuple[str, ...] = ("train", "eval")
#: The optional probes :func:`check` knows.
PROBES: tuple[str, ...] = ("export", "dynamo", "script")

Candidate = nn.Module | Callable[[nn.Module], nn.Module] | None
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[Any], torch.Tensor]







def default_loss(output: Any) -> torch.Tensor:
    """The loss :func:`check` uses unless given one: mean square of each floating output leaf, summed.

    Unlike a plain sum, its gradient depends on the output values, so a candidate whose outputs
    agree only up to a constant offset cannot pass on gradients. Leaves are the tensors found
    in nested tuples, lists, dicts and dataclasses; each is cast to float32 (or wider) first.

    Args:
        output: the model's output, nested in any way.

    Returns:
        A scalar; a constant 0 when no floating-point leaf exists (nothing to backpropagate).

    Example:
        >>> default_loss({"a": torch.tensor([1.0, 3.0]), "b": (torch.tensor([2.0]), 7)})
        tensor(9.)
    """
    total: torch.Tensor | None = None
    for _, leaf in flatten(output, ""):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.numel():
            term = leaf.to(torch.promote_types(leaf.dtype, torch.float32)).pow(2).mean()
            total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def check(
    model: nn.Module,
    example_inputs: Any = (),
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    candidate: Candidate = None,
    steps: int = 3,
    loss_fn: LossFn | None = None,
    optimizer: OptimizerFactory | None = None,
    modes: Sequence[str] = MODES,
    atol: float = 0.0,
    rtol: float = 0.0,
    seed: int = 0,
    probes: Iterable[str] = (),
    compile_options: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Train ``model`` and a candidate side by side and compare them after every step.

    ``model`` (the reference, typically runtime-patched) is never touched: every run works on
    deep copies. For each mode, fresh copies of the reference and the candidate run ``steps``
    optimizer steps on ``example_inputs`` (and ``example_kwargs``); torch's, Python's and numpy's
    RNGs are seeded identically before each model's forward (so dropout draws the same masks) and
    their global states are restored afterwards. Each step compares the outputs leaf by leaf
    (through tuples, lists, dicts, dataclasses, ``ModelOutput``, pytree nodes, and the attributes
    of other objects, so a KV cache's tensors are compared one by one), the gradients of every parameter and input by name, then parameters and buffers after the
    optimizer step; the parameter names and their order are a row of their own. The optimizer is
    built after the first forward, so parameters that transforms create lazily are trained too;
    any created later are added as a new param group on both sides. In ``"eval"`` mode the
    backward pass and the optimizer step run as well, since a model in eval mode can still be
    trained (fine-tuning with frozen BatchNorm statistics). After each trajectory the
    ``state_dict()`` keys, their order and values are compared; after the last one the candidate
    goes through ``torch.save`` / ``torch.load(weights_only=False)`` and the reloaded copy must
    match it (``save_load/...`` rows).

    A candidate that raises, or fails to save, gives failing rows, not an exception; so do
    probes: ``"export"`` (``torch.export.export`` runs and its module matches the candidate),
    ``"script"`` (``torch.jit.script`` likewise) and ``"dynamo"`` (``torch._dynamo.explain``
    runs; its graph-break count goes into the row and ``graph_breaks``; breaks are reported,
    not failed). The forwards of the trajectories are timed in passing: ``time_ratio`` is the
    candidate's eager forward time over the reference's, indicative only.

    Args:
        model: the reference model.
        example_inputs: the positional arguments of ``model``'s forward, as a tuple or list; any
            other object is passed as the only argument.
        example_kwargs: keyword arguments of ``model``'s forward (``input_ids=...,
            attention_mask=...`` for a transformers model), passed with ``example_inputs``.
        candidate: the model claimed equivalent: None for ``fxpass.compile`` of the reference,
            an ``nn.Module`` (deep-copied for each run), or a factory called with a deep copy of
            the reference that returns one.
        steps: optimizer steps per mode.
        loss_fn: output -> scalar loss; :func:`default_loss` when None.
        optimizer: parameter list -> optimizer; ``torch.optim.SGD(params, lr=0.1)`` when None.
        modes: the modes to run a trajectory in, among ``"train"`` and ``"eval"``.
        atol: absolute tolerance; with ``rtol`` 0 as well, comparisons are bitwise.
        rtol: relative tolerance.
        seed: seed of the RNGs before the forwards (step ``i`` uses ``seed + i``).
        probes: optional probes among ``"export"``, ``"dynamo"`` and ``"script"``.
        compile_options: keyword arguments of ``fxpass.compile`` (``scope``, ``concrete_args``)
            when ``candidate`` is None.
        progress: called with a few words before each step, the save/load round trip and each
            probe (``"train step 2/3"``): the command line reports long runs with it.

    Returns:
        The report; ``report.ok`` says whether every check passed.

    Raises:
        InvalidModelError: ``model`` or the candidate is not an ``nn.Module``, or a model cannot be
            deep-copied.
        ExampleInputsError: ``model``'s forward raises on ``example_inputs``.
        ParityArgumentError: ``steps``, ``modes``, a tolerance or a probe cannot be used.
        FxpassError: ``fxpass.compile`` cannot compile the model (when ``candidate`` is None).
            What a candidate factory raises, and what ``loss_fn`` or ``optimizer`` raise on the
            reference, propagates unchanged.

    Example:
        >>> import torch, torch.nn as nn
        >>> from imitation_runtime import imitate
        >>> model = nn.Sequential(imitate(nn.Linear(3, 2), "round", torch.round), nn.Tanh())
        >>> report = check(model, (torch.randn(4, 3),), steps=2)
        >>> report.ok, report.rows[0].name, report.compile_counts
        (True, 'train/step1/output', {'inlined': 2, 'module': 0, 'opaque': 0})
    """
    name = _model_name(model)
    modes = _check_arguments(steps, modes, atol, rtol, probes)
    probes = tuple(probes)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    run = _Run(
        model=model,
        name=name,
        inputs=inputs,
        kwargs=dict(example_kwargs or {}),
        candidate=candidate,
        compile_options=dict(compile_options or {}),
        loss_fn=default_loss if loss_fn is None else loss_fn,
        optimizer=_default_optimizer if optimizer is None else optimizer,
        atol=float(atol),
        rtol=float(rtol),
        seed=seed,
        progress=progress,
    )
    with torch.random.fork_rng(), _python_and_numpy_rng_restored():
        run.preflight()
        for mode in modes:
            run.trajectory(mode, steps)
        _tell(progress, "save/load")
        run.save_load()
        for probe in probes:
            _tell(progress, f"probe {probe}")
            run.probe(probe)
        time_ratio = run.time_ratio()
    counts, patched, kept = run.record_summary()
    return ParityReport(
        model=name,
        candidate=run.candidate_label,
        rows=tuple(run.rows),
        modes=modes,
        steps=steps,
        atol=float(atol),
        rtol=float(rtol),
        seed=seed,
        compile_counts=counts,
        patched_modules=patched,
        kept_calls=kept,
        time_ratio=time_ratio,
        graph_breaks=run.graph_breaks,
        scope=run.scope,
    )


# -- the run ---------------------------------------------------------------------------------------


class _Run:
    """State of one :func:`check` call: the configuration, the rows so far, the last models."""

    def __init__(
        self,
        *,
        model: nn.Module,
        name: str,
        inputs: tuple[Any, ...],
        kwargs: dict[str, Any],
        candidate: Candidate,
        compile_options: dict[str, Any],
        loss_fn: LossFn,
        optimizer: OptimizerFactory,
        atol: float,
        rtol: float,
        seed: int,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.progress = progress
        #: how fxpass.compile compiled the candidate ("model", "module"), or None
        self.scope: str | None = None
        self.name = name
        self.inputs = inputs
        self.kwargs = kwargs
        self.candidate = candidate
        self.compile_options = compile_options
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.atol = atol
        self.rtol = rtol
        self.seed = seed
        self.rows: list[ParityRow] = []
        self.records: dict[str, CompileRecord] | None = None
        self.graph_breaks: int | None = None
        self.last_reference: nn.Module | None = None
        self.last_candidate: nn.Module | None = None
        #: per trajectory, (reference, candidate) seconds of each step's forward
        self.forward_seconds: list[list[tuple[float, float]]] = []
        if compile_options and candidate is not None:
            raise ParityArgumentError(
                f"check({name}): compile_options apply to fxpass.compile only; build the candidate "
                "with them yourself, or pass candidate=None"
            )
        if candidate is None:
            options = ", ".join(f"{k}={v!r}" for k, v in compile_options.items())
            self.candidate_label = f"fxpass.compile({options})" if options else "fxpass.compile"
        elif isinstance(candidate, nn.Module):
            self.candidate_label = f"{type(candidate).__name__} (given)"
        elif callable(candidate):
            self.candidate_label = f"{_callable_name(candidate)}(model)"
        else:
            raise InvalidModelError(
                f"check({name}): candidate must be None (fxpass.compile), an nn.Module or a "
                f"factory model -> nn.Module, got {type(candidate).__name__}"
            )

    # building ------------------------------------------------------------------------------------

    def reference(self) -> nn.Module:
        return _deepcopy(self.model, self.name, "the model")

    def build_candidate(self) -> nn.Module:
        if self.candidate is None:
            built = fxpass_compile(self.reference(), **self.compile_options)
        elif isinstance(self.candidate, nn.Module):
            built = _deepcopy(self.candidate, self.name, "the candidate")
        else:
            built = self.candidate(self.reference())
            if not isinstance(built, nn.Module):
                raise InvalidModelError(
                    f"check({self.name}): the candidate factory {self.candidate_label} returned "
                    f"{type(built).__name__}; it must return an nn.Module"
                )
        if self.records is None:
            self.records = records(built)
            self.scope = "module" if scope_record(built) is not None else "model" if self.records else None
        return built

    def record_summary(self) -> tuple[dict[str, int] | None, int | None, int | None]:
        """Counts of the compile records of the candidate, summed over its compiled parts."""
        if not self.records:
            return None, None, None
        counts: dict[str, int] = {}
        for record in self.records.values():
            for how, count in record.counts().items():
                counts[how] = counts.get(how, 0) + count
        patched = sum(len(r.patched_modules) for r in self.records.values())
        kept = sum(len(r.kept_calls) for r in self.records.values())
        return counts, patched, kept

    def seed_for(self, step: int) -> None:
        _seed_everything(self.seed + step)

    def fresh_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """New copies of the example inputs, so one model's in-place edits cannot reach another."""
        return _fresh(self.inputs), _fresh(self.kwargs)

    def call(self, module: nn.Module) -> Any:
        """``module`` on fresh copies of the example inputs."""
        args, kwargs = self.fresh_inputs()
        return module(*args, **kwargs)

    # the checks ----------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Run the reference once, on a copy, to tell bad inputs apart from a bad candidate."""
        reference = self.reference()
        self.seed_for(0)
        try:
            with torch.no_grad():
                self.call(reference)
        except Exception as e:
            raise self.inputs_error(e, "") from e

    def inputs_error(self, error: Exception, where: str) -> ExampleInputsError:
        return ExampleInputsError(
            f"check({self.name}): the example inputs do not fit the model{where}: "
            f"{self.name}(*example_inputs) raised {type(error).__name__}: {error}. "
            f"example_inputs were ({_describe_inputs(self.inputs)}); pass a tuple of the "
            f"positional arguments that {self.name}.forward accepts"
        )

    def add(
        self,
        name: str,
        result: Comparison | None = None,
        *,
        passed: bool | None = None,
        detail: str = "",
    ) -> None:
        """Append a row: a tensor comparison, or a verdict with its detail."""
        if result is not None:
            row = ParityRow(
                name, result.passed, result.bitwise, result.max_abs, result.max_rel, result.detail
            )
        else:
            assert passed is not None
            row = ParityRow(name, passed, passed, None, None, detail)
        self.rows.append(row)

    def compare(self, reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> Comparison:
        return compare_all(reference, candidate, self.atol, self.rtol)

    def trajectory(self, mode: str, steps: int) -> None:
        training = mode == "train"
        reference = self.reference().train(training)
        candidate = self.build_candidate().train(training)
        self.last_reference, self.last_candidate = reference, candidate
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None] | None = None
        names_failure = ""
        seconds: list[tuple[float, float]] = []
        self.forward_seconds.append(seconds)
        for step in range(1, steps + 1):
            prefix = f"{mode}/step{step}"
            _tell(self.progress, f"{mode} step {step}/{steps}")
            for module in (reference, candidate):
                for parameter in module.parameters():
                    parameter.grad = None
            inputs_r, inputs_c = self.fresh_inputs(), self.fresh_inputs()
            self.seed_for(step)
            start = time.perf_counter()
            try:
                out_r = reference(*inputs_r[0], **inputs_r[1])
            except Exception as e:
                raise self.inputs_error(e, f" (at {prefix})") from e
            middle = time.perf_counter()
            self.seed_for(step)
            start_c = time.perf_counter()
            try:
                out_c = candidate(*inputs_c[0], **inputs_c[1])
            except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
                self.add(f"{prefix}/output", passed=False, detail=f"candidate raised {error_text(e)}")
                break
            seconds.append((middle - start, time.perf_counter() - start_c))
            self.add(f"{prefix}/output", self.compare(flat(out_r, "output"), flat(out_c, "output")))

            names_r = [n for n, _ in reference.named_parameters()]
            names_c = [n for n, _ in candidate.named_parameters()]
            if not names_failure and names_r != names_c:
                names_failure = f"at step {step}: " + sequence_difference(names_r, names_c, "parameters")

            if optimizers is None:
                optimizers = (
                    _make_optimizer(self.optimizer, reference),
                    _make_optimizer(self.optimizer, candidate),
                )
            else:
                for optimizer, module in zip(optimizers, (reference, candidate)):
                    _add_new_parameters(optimizer, module)

            loss_r = self.loss_fn(out_r)
            grad_error = ""
            if isinstance(loss_r, torch.Tensor) and loss_r.requires_grad:
                loss_r.backward()
                try:
                    loss_c = self.loss_fn(out_c)
                    if not (isinstance(loss_c, torch.Tensor) and loss_c.requires_grad):
                        grad_error = "the candidate's loss does not require grad; nothing to backpropagate"
                    else:
                        loss_c.backward()
                except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
                    grad_error = f"candidate backward raised {error_text(e)}"
            if grad_error:
                self.add(f"{prefix}/grad", passed=False, detail=grad_error)
            else:
                self.add(
                    f"{prefix}/grad",
                    self.compare(_grads(reference, *inputs_r), _grads(candidate, *inputs_c)),
                )

            step_error = ""
            for which, optimizer in zip(("reference", "candidate"), optimizers):
                if optimizer is None:
                    continue
                try:
                    optimizer.step()
                except Exception as e:
                    if which == "reference":
                        raise
                    step_error = f"candidate optimizer step raised {error_text(e)}"
            if step_error:
                self.add(f"{prefix}/params", passed=False, detail=step_error)
                break
            self.add(
                f"{prefix}/params",
                self.compare(dict(reference.named_parameters()), dict(candidate.named_parameters())),
            )
            self.add(
                f"{prefix}/buffers",
                self.compare(dict(reference.named_buffers()), dict(candidate.named_buffers())),
            )

        self.add(f"{mode}/param_names", passed=not names_failure, detail=names_failure)
        self.state_dict_rows(f"{mode}/state_dict", reference, candidate)

    def state_dict_rows(self, prefix: str, reference: nn.Module, candidate: nn.Module) -> None:
        try:
            state_c = candidate.state_dict()
        except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
            self.add(f"{prefix}/keys", passed=False, detail=f"candidate state_dict() raised {error_text(e)}")
            return
        state_r = reference.state_dict()
        keys_r, keys_c = list(state_r), list(state_c)
        missing = [k for k in keys_r if k not in state_c]
        extra = [k for k in keys_c if k not in state_r]
        detail = "; ".join(
            f"{what} in candidate: {listing(keys)}"
            for what, keys in (("missing", missing), ("extra", extra))
            if keys
        )
        self.add(f"{prefix}/keys", passed=not detail, detail=detail)
        common_r = [k for k in keys_r if k in state_c]
        common_c = [k for k in keys_c if k in state_r]
        order = "" if common_r == common_c else sequence_difference(common_r, common_c, "keys")
        self.add(f"{prefix}/order", passed=not order, detail=order)
        self.add(f"{prefix}/values", self.compare(state_r, state_c))

    def save_load(self) -> None:
        candidate = self.last_candidate
        if candidate is None:
            return
        buffer = io.BytesIO()
        try:
            torch.save(candidate, buffer)
            buffer.seek(0)
            loaded = torch.load(buffer, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
            detail = f"torch.save/torch.load failed: {error_text(e)}"
            self.add("save_load/output", passed=False, detail=detail)
            return
        candidate.eval()
        loaded.eval()
        self.add("save_load/state_dict", self.compare(candidate.state_dict(), loaded.state_dict()))
        outputs = []
        for module in (candidate, loaded):
            self.seed_for(0)
            try:
                with torch.no_grad():
                    outputs.append(flat(self.call(module), "output"))
            except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
                detail = f"reloaded candidate raised {error_text(e)}"
                self.add("save_load/output", passed=False, detail=detail)
                return
        self.add("save_load/output", self.compare(outputs[0], outputs[1]))

    def probe(self, probe: str) -> None:
        name = f"probe/{probe}"
        try:
            candidate = self.build_candidate().eval()
            if probe == "dynamo":
                from torch import _dynamo

                _dynamo.reset()
                try:
                    self.seed_for(0)
                    args, kwargs = self.fresh_inputs()
                    explained = _dynamo.explain(candidate)(*args, **kwargs)
                finally:
                    _dynamo.reset()
                self.graph_breaks = explained.graph_break_count
                reasons = "".join(
                    f"; first break: {b.reason}" for b in explained.break_reasons[:1]
                )
                self.add(
                    name,
                    passed=True,
                    detail=f"{explained.graph_count} graph(s), {explained.graph_break_count} graph "
                    f"break(s){reasons}",
                )
                return
            converted: nn.Module
            if probe == "export":
                args, kwargs = self.fresh_inputs()
                converted = torch.export.export(candidate, tuple(args), kwargs).module()
            else:
                converted = torch.jit.script(candidate)
            outputs = []
            for module in (candidate, converted):
                self.seed_for(0)
                with torch.no_grad():
                    outputs.append(flat(self.call(module), "output"))
        except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
            self.add(name, passed=False, detail=error_text(e))
            return
        self.add(name, self.compare(outputs[0], outputs[1]))

    def time_ratio(self) -> float | None:
        """Median of candidate / reference forward time over the trajectories' steps, the first
        step of a trajectory left out when it has more (first calls pay for warm-up)."""
        ratios = [
            candidate / reference
            for seconds in self.forward_seconds
            for reference, candidate in (seconds[1:] if len(seconds) > 1 else seconds)
            if reference > 0
        ]
        return statistics.median(ratios) if ratios else None


# -- comparing -------------------------------------------------------------------------------------










# -- helpers ---------------------------------------------------------------------------------------


def _tell(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and numpy (when installed): models draw from all three
    (dropout; wav2vec2-style masks are drawn with numpy)."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


@contextlib.contextmanager
def _python_and_numpy_rng_restored() -> Iterator[None]:
    """Within the block, Python's and numpy's global RNG may be reseeded; after it they are as
    they were (torch's is restored by ``torch.random.fork_rng``)."""
    state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        random.setstate(state)
        if numpy is not None and numpy_state is not None:
            numpy.random.set_state(numpy_state)










def _fresh(value: Any) -> Any:
    """A copy of nested inputs with new tensors, so one model's in-place edits cannot reach another."""
    if isinstance(value, torch.Tensor):
        copied = value.detach().clone()
        if copied.is_floating_point() or copied.is_complex():
            copied.requires_grad_(value.requires_grad)
        return copied
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_fresh(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _fresh(v)) for k, v in value.items())
    return copy.deepcopy(value)


def _grads(module: nn.Module, args: Any, kwargs: Any) -> dict[str, Any]:
    grads: dict[str, Any] = {name: p.grad for name, p in module.named_parameters()}
    for path, leaf in [*flatten(args, "inputs"), *flatten(kwargs, "kwargs")]:
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            grads[path] = leaf.grad
    return grads


def _default_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


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


def _deepcopy(module: Any, name: str, what: str) -> nn.Module:
    try:
        return copy.deepcopy(module)
    except Exception as e:
        raise InvalidModelError(
            f"check({name}): {what} cannot be deep-copied ({error_text(e)}); check works on "
            "copies so that the model given is never changed"
        ) from e


def _model_name(model: Any) -> str:
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"fxpass.parity.check expects an nn.Module as the reference model, got {type(model).__name__}"
        )
    return type(model).__name__


def _check_arguments(
    steps: int, modes: Sequence[str], atol: float, rtol: float, probes: Iterable[str]
) -> tuple[str, ...]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParityArgumentError(f"check: steps must be a positive int, got {steps!r}")
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ParityArgumentError(
            f"check: modes must be a non-empty sequence of {', '.join(MODES)}; got {modes!r}"
        )
    for label, value in (("atol", atol), ("rtol", rtol)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ParityArgumentError(f"check: {label} must be a number >= 0, got {value!r}")
    if isinstance(probes, str):
        raise ParityArgumentError(f"check: probes must be a sequence of names, e.g. ({probes!r},)")
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ParityArgumentError(
            f"check: unknown probe(s) {', '.join(map(repr, unknown))}; choose among {', '.join(PROBES)}"
        )
    return modes








def _callable_name(function: Callable[..., Any]) -> str:
    owner = getattr(function, "__self__", None)
    if isinstance(owner, type):  # a classmethod: name the class it was looked up on
        return f"{owner.__name__}.{function.__name__}"
    return getattr(function, "__qualname__", type(function).__name__)


def _describe_inputs(inputs: tuple[Any, ...]) -> str:
    def one(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
        return type(value).__name__

    return ", ".join(one(v) for v in inputs) or "no arguments"






