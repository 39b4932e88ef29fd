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

import copy
import dataclasses
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fxpass import _probes
from fxpass._rewrite import compile as fxpass_compile
from fxpass._rewrite import records
from fxpass._trajectory import LossFn, OptimizerFactory, Settings, Trajectory, rng_restored, train
from fxpass.comparison import error_text, flatten, listing
from fxpass.errors import ExampleInputsError, InvalidModelError, ParityArgumentError
from fxpass.parity_report import ParityReport, ParityRow
from fxpass.record import CompileRecord, record_totals, scope_record

__all__ = [
    "MODES",
    "PROBES",
    "ExampleInputsError",
    "ParityArgumentError",
    "ParityReport",
    "ParityRow",
    "check",
    "default_loss",
    "side_by_side",
]

#: The modes :func:`check` can run a trajectory in.
MODES: tuple[str, ...] = ("train", "eval")
#: The optional probes :func:`check` knows.
PROBES: tuple[str, ...] = tuple(_probes.PROBES)

Candidate = nn.Module | Callable[[nn.Module], nn.Module] | None


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
    setup = _Setup.of(
        model, name, candidate, compile_options,
        _settings(name, example_inputs, example_kwargs, loss_fn, optimizer, atol, rtol, seed, progress),
    )  # fmt: skip
    with rng_restored():
        _preflight(setup)
        runs = [_mode_trajectory(setup, mode, steps) for mode in modes]
        rows = [r for run in runs for r in run.trajectory.rows]
        setup.settings.tell("save/load")
        rows += _probes.save_load(setup.settings, runs[-1].candidate)
        graph_breaks = None
        for probe in probes:
            setup.settings.tell(f"probe {probe}")
            probed, breaks = _probes.PROBES[probe](setup.build_candidate, setup.settings)
            rows.append(probed)
            graph_breaks = breaks if breaks is not None else graph_breaks
    return _report(
        setup.settings, name, setup.candidate_label, rows, modes, steps, runs[0].compiled,
        [run.trajectory for run in runs], graph_breaks=graph_breaks,
    )  # fmt: skip


def side_by_side(
    reference: nn.Module,
    candidate: nn.Module,
    example_inputs: Any = (),
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    modes: Sequence[str] = ("train", "eval", "train"),
    loss_fn: LossFn | None = None,
    optimizer: OptimizerFactory | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    seed: int = 0,
) -> ParityReport:
    """Train two given models in place, one optimizer step per entry of ``modes``, and compare
    them after every step: :func:`check`'s trajectory on the models themselves.

    Where :func:`check` works on fresh copies, one trajectory per mode, this steps the models it
    is given along any sequence of modes (``("train", "eval", "train")`` switches mode between
    steps, as a training loop with evaluation does), so tests can go on with the trained pair.
    Each step compares the outputs, the gradients, the parameters and the buffers as in
    :func:`check` (rows ``<mode>/step<i>/...``, ``i`` counting along ``modes``); after the last
    step the parameter names (``end/param_names``) and ``state_dict()`` (``end/state_dict/...``).
    No save/load round trip and no probes. The optimizers are built after the first forward; the
    RNGs are seeded as in :func:`check` and restored afterwards.

    Args:
        reference: the reference model (trained in place).
        candidate: the model claimed equivalent (trained in place).
        example_inputs: as for :func:`check`.
        example_kwargs: as for :func:`check`.
        modes: one step per entry, each ``"train"`` or ``"eval"``.
        loss_fn: as for :func:`check`.
        optimizer: as for :func:`check`.
        atol: as for :func:`check`.
        rtol: as for :func:`check`.
        seed: as for :func:`check`.

    Returns:
        The report (``steps`` is the number of entries of ``modes``).

    Raises:
        InvalidModelError: the candidate is not an ``nn.Module``, or the two share parameters
            or buffers (both optimizers would step them: ``fxpass.compile`` shares the model's
            tensors, so compile a deep copy).
        ExampleInputsError: the reference's forward raises on the example inputs.
        ParityArgumentError: ``modes`` or a tolerance cannot be used.

    Example:
        >>> import copy, torch, torch.nn as nn
        >>> from imitation_runtime import imitate
        >>> import fxpass
        >>> model = nn.Sequential(imitate(nn.Linear(3, 2), "round", torch.round), nn.Dropout(0.5))
        >>> compiled = fxpass.compile(copy.deepcopy(model))  # (compile shares the model's tensors)
        >>> report = side_by_side(model, compiled, (torch.randn(4, 3),), modes=("train", "eval"))
        >>> report.ok, [r.name for r in report.rows][:2], report.steps
        (True, ['train/step1/output', 'train/step1/grad'], 2)
    """
    name = _model_name(reference)
    if not isinstance(candidate, nn.Module):
        raise InvalidModelError(f"side_by_side({name}): the candidate must be an nn.Module, got {type(candidate).__name__}")
    sequence = _check_modes(modes, "side_by_side")
    _check_tolerances(atol, rtol, "side_by_side")
    shared = _shared_tensors(reference, candidate)
    if shared:
        raise InvalidModelError(
            f"side_by_side({name}): the reference and the candidate share {len(shared)} tensors "
            f"({listing(shared)}), which both optimizers would step; fxpass.compile shares the "
            "model's tensors: compile a deep copy of the model (fxpass.compile(copy.deepcopy(model)))"
        )
    settings = _settings(name, example_inputs, example_kwargs, loss_fn, optimizer, atol, rtol, seed, None)
    compiled = _Compiled.of(candidate)
    with rng_restored():
        trajectory = train(settings, reference, candidate, sequence, "end")
    label = f"{type(candidate).__name__} (given)"
    return _report(
        settings, name, label, trajectory.rows, tuple(dict.fromkeys(sequence)), len(sequence), compiled, [trajectory]
    )


# -- the phases of a check -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What one :func:`check` call works with: the model, how to build the candidate, the settings."""

    model: nn.Module
    name: str
    candidate: Candidate
    compile_options: dict[str, Any]
    settings: Settings
    candidate_label: str

    @staticmethod
    def of(
        model: nn.Module, name: str, candidate: Candidate, compile_options: Mapping[str, Any] | None, settings: Settings
    ) -> _Setup:
        options = dict(compile_options or {})
        if options and candidate is not None:
            raise ParityArgumentError(
                f"check({name}): compile_options apply to fxpass.compile only; build the candidate "
                "with them yourself, or pass candidate=None"
            )
        if candidate is None:
            listed = ", ".join(f"{k}={v!r}" for k, v in options.items())
            label = f"fxpass.compile({listed})" if listed else "fxpass.compile"
        elif isinstance(candidate, nn.Module):
            label = f"{type(candidate).__name__} (given)"
        elif callable(candidate):
            label = f"{_callable_name(candidate)}(model)"
        else:
            raise InvalidModelError(
                f"check({name}): candidate must be None (fxpass.compile), an nn.Module or a "
                f"factory model -> nn.Module, got {type(candidate).__name__}"
            )
        return _Setup(model, name, candidate, options, settings, label)

    def reference(self) -> nn.Module:
        return _deepcopy(self.model, self.name, "the model")

    def build_candidate(self) -> nn.Module:
        if self.candidate is None:
            return fxpass_compile(self.reference(), **self.compile_options)
        if isinstance(self.candidate, nn.Module):
            return _deepcopy(self.candidate, self.name, "the candidate")
        built = self.candidate(self.reference())
        if not isinstance(built, nn.Module):
            raise InvalidModelError(
                f"check({self.name}): the candidate factory {self.candidate_label} returned "
                f"{type(built).__name__}; it must return an nn.Module"
            )
        return built


def _settings(
    name: str,
    example_inputs: Any,
    example_kwargs: Mapping[str, Any] | None,
    loss_fn: LossFn | None,
    optimizer: OptimizerFactory | None,
    atol: float,
    rtol: float,
    seed: int,
    progress: Callable[[str], None] | None,
) -> Settings:
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)

    def inputs_error(error: Exception, where: str) -> ExampleInputsError:
        return ExampleInputsError(
            f"check({name}): the example inputs do not fit the model{where}: "
            f"{name}(*example_inputs) raised {type(error).__name__}: {error}. "
            f"example_inputs were ({_describe_inputs(inputs)}); pass a tuple of the "
            f"positional arguments that {name}.forward accepts"
        )

    return Settings(
        inputs=inputs,
        kwargs=dict(example_kwargs or {}),
        loss_fn=default_loss if loss_fn is None else loss_fn,
        optimizer=_default_optimizer if optimizer is None else optimizer,
        atol=float(atol),
        rtol=float(rtol),
        seed=seed,
        inputs_error=inputs_error,
        progress=progress,
    )


def _preflight(setup: _Setup) -> None:
    """Run the reference once, on a copy, to tell bad inputs apart from a bad candidate."""
    reference = setup.reference()
    setup.settings.seed_for(0)
    try:
        with torch.no_grad():
            setup.settings.call(reference)
    except Exception as e:
        raise setup.settings.inputs_error(e, "") from e


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """What the candidate's compile records say, read when it was built (a model traced once
    per mode swaps its record with its mode)."""

    records: dict[str, CompileRecord]
    scope: str | None

    @staticmethod
    def of(candidate: nn.Module) -> _Compiled:
        found = records(candidate)
        return _Compiled(found, "module" if scope_record(candidate) is not None else "model" if found else None)


@dataclasses.dataclass(frozen=True)
class _ModeRun:
    trajectory: Trajectory
    candidate: nn.Module
    compiled: _Compiled


def _mode_trajectory(setup: _Setup, mode: str, steps: int) -> _ModeRun:
    """``steps`` steps in ``mode`` on a fresh reference and candidate."""
    reference = setup.reference()
    candidate = setup.build_candidate()
    compiled = _Compiled.of(candidate)
    return _ModeRun(train(setup.settings, reference, candidate, (mode,) * steps, mode), candidate, compiled)


# -- the report ------------------------------------------------------------------------------------


def _report(
    settings: Settings,
    name: str,
    label: str,
    rows: list[ParityRow],
    modes: tuple[str, ...],
    steps: int,
    compiled: _Compiled,
    trajectories: list[Trajectory],
    *,
    graph_breaks: int | None = None,
) -> ParityReport:
    found = compiled.records
    return ParityReport(
        model=name,
        candidate=label,
        rows=tuple(rows),
        modes=modes,
        steps=steps,
        atol=settings.atol,
        rtol=settings.rtol,
        seed=settings.seed,
        compile_counts=record_totals(found.values()) if found else None,
        patched_modules=sum(len(r.patched_modules) for r in found.values()) if found else None,
        kept_calls=sum(len(r.kept_calls) for r in found.values()) if found else None,
        time_ratio=_time_ratio(trajectories),
        graph_breaks=graph_breaks,
        scope=compiled.scope,
    )


def _time_ratio(trajectories: list[Trajectory]) -> float | None:
    """Median of candidate / reference forward time over the trajectories' steps, the first
    step of a trajectory left out when it has more (first calls pay for warm-up)."""
    ratios = [
        candidate / reference
        for trajectory in trajectories
        for reference, candidate in (trajectory.seconds[1:] if len(trajectory.seconds) > 1 else trajectory.seconds)
        if reference > 0
    ]
    return statistics.median(ratios) if ratios else None


# -- helpers ---------------------------------------------------------------------------------------


def _shared_tensors(reference: nn.Module, candidate: nn.Module) -> list[str]:
    """The names (in the reference) of the parameters and buffers the two models share."""
    theirs = {id(t) for t in (*candidate.parameters(), *candidate.buffers())}
    return [n for n, t in (*reference.named_parameters(), *reference.named_buffers()) if id(t) in theirs]


def _default_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


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


def _check_modes(modes: Sequence[str], caller: str = "check") -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ParityArgumentError(
            f"{caller}: modes must be a non-empty sequence of {', '.join(MODES)}; got {modes!r}"
        )
    return modes


def _check_tolerances(atol: float, rtol: float, caller: str = "check") -> None:
    for label, value in (("atol", atol), ("rtol", rtol)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ParityArgumentError(f"{caller}: {label} must be a number >= 0, got {value!r}")


def _check_arguments(
    steps: int, modes: Sequence[str], atol: float, rtol: float, probes: Iterable[str]
) -> tuple[str, ...]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParityArgumentError(f"check: steps must be a positive int, got {steps!r}")
    modes = _check_modes(modes)
    _check_tolerances(atol, rtol)
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
