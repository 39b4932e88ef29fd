"""fxpass.parity.check and fxpass.testing.assert_parity: the harness passes the zoo and catches
every kind of divergence it claims to, each with its own failing row.

Harness checks are bitwise (atol = rtol = 0) unless a test's name says otherwise.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxpass
from fxpass import zoo
from fxpass.errors import FxpassError, InvalidModelError
from fxpass.parity import (
    ExampleInputsError,
    ParityArgumentError,
    ParityReport,
    ParityRow,
    check,
    default_loss,
    side_by_side,
)
from fxpass.testing import assert_parity
from imitation_runtime import imitate
from tests.support import assert_same_snapshot, snapshot, zoo_params

# -- models and candidates -------------------------------------------------------------------------


def halve(w: torch.Tensor) -> torch.Tensor:
    return w * 0.5


class Net(nn.Module):
    """A runtime-patched reference: one imitated Linear, then a plain one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = imitate(nn.Linear(4, 5), "halving", halve)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)))


class HandWritten(nn.Module):
    """Net rewritten by hand: the same parameters, the transform written out in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    @classmethod
    def of(cls, model: nn.Module) -> HandWritten:
        candidate = cls()
        candidate.load_state_dict(model.state_dict())
        return candidate

    def weight(self) -> torch.Tensor:
        return halve(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(F.linear(x, self.weight(), self.fc.bias)))


class Drifting(HandWritten):
    """Exact for two forwards, then its transform drifts: a counter that no state_dict shows."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def weight(self) -> torch.Tensor:
        self.calls += 1
        return halve(self.fc.weight) * (1.0 if self.calls < 3 else 1.001)


class Detached(HandWritten):
    """The same outputs, but no gradient flows into the weight through the transform."""

    def weight(self) -> torch.Tensor:
        return halve(self.fc.weight).detach()


class Reordered(HandWritten):
    """Exact in everything but the order of its state_dict() keys."""

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict(*args, **kwargs)
        return OrderedDict(reversed(list(state.items())))


class Renamed(nn.Module):
    """Exact outputs and gradients, but the parameters live under other names."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.first = nn.Linear(4, 5)
        self.second = nn.Linear(5, 3)
        state = model.state_dict()
        self.first.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
        self.second.load_state_dict({"weight": state["out.weight"], "bias": state["out.bias"]})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(F.linear(x, halve(self.first.weight), self.first.bias)))


class Nudged(HandWritten):
    """Off by 1e-7 in every output: not bitwise, but within any sensible tolerance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1e-7


class Nested(nn.Module):
    """Returns a dict holding a tensor and a tuple of two tensors."""

    def __init__(self, skew: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = imitate(nn.Linear(4, 4), "halving", halve)
        self.skew = skew

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        h = self.fc(x)
        return {"logits": h, "extra": (h.sum(dim=1), torch.relu(h) + self.skew)}


def nested_candidate(skew: float):
    def build(model: nn.Module) -> nn.Module:
        gm = fxpass.compile(model)
        if skew:
            shifted = Nested(skew)
            shifted.load_state_dict(model.state_dict())
            return shifted
        return gm

    return build


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(6, 4, generator=torch.Generator().manual_seed(1)),)


def failing_names(report: ParityReport) -> list[str]:
    return [row.name for row in report.failures()]


# -- the zoo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", zoo_params())
def test_check_passes_bitwise_over_the_zoo(entry: zoo.ZooEntry) -> None:
    model, example = entry.build()
    report = check(model, example, steps=3, compile_options=entry.compile_options())
    assert report.ok, report.summary() + "\n" + report.table(failures_only=True)
    assert report.bitwise
    assert report.compile_counts is not None and sum(report.compile_counts.values()) > 0
    names = {row.name for row in report.rows}
    for mode in ("train", "eval"):
        for step in (1, 2, 3):
            for what in ("output", "grad", "params", "buffers"):
                assert f"{mode}/step{step}/{what}" in names
        for what in ("param_names", "state_dict/keys", "state_dict/order", "state_dict/values"):
            assert f"{mode}/{what}" in names
    assert {"save_load/output", "save_load/state_dict"} <= names


def test_assert_parity_passes_silently_for_a_correct_hand_written_candidate() -> None:
    assert assert_parity(Net(), inputs(), candidate=HandWritten.of) is None


def test_check_leaves_the_user_model_untouched() -> None:
    model, example = zoo.get("stateful").build()  # lazy parameters, counters in buffers
    before = snapshot(model)
    keys, state = list(model.state_dict()), {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    report = check(model, example, steps=3)
    assert report.ok
    assert_same_snapshot(before, snapshot(model))
    assert list(model.state_dict()) == keys
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == classes
    assert all(p.grad is None for p in model.parameters())


def test_check_leaves_a_given_candidate_untouched() -> None:
    model = Net()
    candidate = HandWritten.of(model)
    before = snapshot(candidate)
    assert check(model, inputs(), candidate=candidate).ok
    assert_same_snapshot(before, snapshot(candidate))


def test_check_restores_the_global_rng() -> None:
    model = Net()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check(model, inputs(), steps=1)
    assert torch.equal(torch.rand(3), expected)


# -- divergences the harness must catch ------------------------------------------------------------


def test_assert_parity_fails_on_a_candidate_that_diverges_only_at_step_3() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_parity(Net(), inputs(), candidate=Drifting.of, steps=3)
    message = str(caught.value)
    assert "train/step3/output" in message and "eval/step3/output" in message
    assert "train/step1" not in message and "train/step2" not in message
    report = check(Net(), inputs(), candidate=Drifting.of, steps=3)
    assert "train/step3/output" in failing_names(report)
    assert not any(name.startswith(("train/step1", "train/step2")) for name in failing_names(report))
    # two steps are not enough to see it
    assert check(Net(), inputs(), candidate=Drifting.of, steps=2).ok


def test_assert_parity_fails_on_a_candidate_that_differs_only_in_state_dict_order() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_parity(Net(), inputs(), candidate=Reordered.of)
    assert "train/state_dict/order" in str(caught.value)
    report = check(Net(), inputs(), candidate=Reordered.of)
    assert set(failing_names(report)) == {"train/state_dict/order", "eval/state_dict/order"}


def test_assert_parity_fails_on_a_candidate_with_other_parameter_names() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_parity(Net(), inputs(), candidate=Renamed)
    message = str(caught.value)
    assert "train/param_names" in message and "train/state_dict/keys" in message
    assert "'fc.weight' (reference) vs 'first.weight' (candidate)" in message
    report = check(Net(), inputs(), candidate=Renamed)
    assert not any(name.endswith("/output") for name in failing_names(report))


def test_assert_parity_fails_on_a_candidate_whose_gradients_differ_but_outputs_match() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_parity(Net(), inputs(), candidate=Detached.of, steps=1)
    message = str(caught.value)
    assert "train/step1/grad" in message and "fc.weight" in message
    report = check(Net(), inputs(), candidate=Detached.of, steps=1)
    assert "train/step1/grad" in failing_names(report)
    assert "train/step1/output" not in failing_names(report)


def test_assert_parity_fails_on_one_differing_leaf_of_a_nested_output() -> None:
    assert check(Nested(), inputs(), candidate=nested_candidate(0.0)).ok
    with pytest.raises(AssertionError) as caught:
        assert_parity(Nested(), inputs(), candidate=nested_candidate(1e-3), steps=1)
    message = str(caught.value)
    assert "train/step1/output" in message
    assert "output['extra'][1]" in message
    row = next(r for r in check(Nested(), inputs(), candidate=nested_candidate(1e-3)).rows
               if r.name == "train/step1/output")
    assert row.detail.startswith("output['extra'][1]:")
    assert row.max_abs_diff == pytest.approx(1e-3, rel=1e-3)


class Frozen(HandWritten):
    """Exact outputs and gradients, but the optimizer never sees ``out.bias``."""

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return (p for name, p in self.named_parameters() if name != "out.bias")


def test_check_fails_on_parameters_that_differ_only_after_the_optimizer_step() -> None:
    report = check(Net(), inputs(), candidate=Frozen.of, steps=1)
    assert "train/step1/params" in failing_names(report)
    assert "train/step1/output" not in failing_names(report)
    assert "train/step1/grad" not in failing_names(report)
    row = next(r for r in report.rows if r.name == "train/step1/params")
    assert row.detail.startswith("out.bias:")


def _frozen_net() -> Net:
    net = Net()
    net.requires_grad_(False)
    return net


def test_check_fails_on_an_output_that_requires_grad_where_the_reference_does_not() -> None:
    # A frozen reference has no gradient to compare, so only requires_grad tells the two apart.
    report = check(_frozen_net(), inputs(), candidate=HandWritten.of, steps=1, modes=("train",))
    assert failing_names(report) == ["train/step1/output"]
    assert report.failures()[0].detail == "requires grad in the candidate only: output"
    assert report.failures()[0].bitwise  # the values themselves agree
    frozen_candidate = lambda model: HandWritten.of(model).requires_grad_(False)  # noqa: E731
    assert check(_frozen_net(), inputs(), candidate=frozen_candidate, steps=1).ok


class SwitchesToEval(nn.Module):
    """Its forward uses its dropout, then (with ``switch``) turns it off for the next call."""

    def __init__(self, switch: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 5)
        self.drop = nn.Dropout(0.5)
        self.switch = switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.fc(x))
        if self.switch:
            self.drop.eval()
        return y


def _not_switching(model: nn.Module) -> nn.Module:
    candidate = SwitchesToEval(switch=False)
    candidate.load_state_dict(model.state_dict())
    return candidate


def test_check_sets_the_mode_once_per_trajectory_so_a_forward_that_changes_it_is_seen() -> None:
    # Setting the mode before every step would hide what the reference's forward did to it.
    report = check(SwitchesToEval(), inputs(), candidate=_not_switching, steps=2, modes=("train",))
    assert failing_names(report)[0] == "train/step2/output"
    assert "train/step1/output" not in failing_names(report)


class TrainOnlyHead(nn.Module):
    """Its own forward reads self.training (compiled once per mode): the head runs in training only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = imitate(nn.Linear(4, 4), "halving", halve)
        self.head = imitate(nn.Linear(4, 4), "halving", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return self.head(x) if self.training else x


def test_check_reports_the_record_of_the_mode_the_model_was_compiled_in() -> None:
    model = TrainOnlyHead().eval()
    expected = fxpass.record_of(fxpass.compile(copy.deepcopy(model))).counts()
    assert expected["inlined"] == 2  # the eval graph reads the body's weight and bias only
    report = check(model, inputs(), steps=1)  # (trajectories in train, then eval)
    assert report.ok and report.compile_counts == expected


def test_side_by_side_trains_the_given_pair_in_place_across_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(4, 5), "halving", halve), nn.BatchNorm1d(5), nn.Dropout(0.5))
    compiled = fxpass.compile(copy.deepcopy(model))  # (compile shares the model's tensors)
    weight = dict(model.named_parameters())["0.weight"]
    before = weight.detach().clone()
    report = side_by_side(model, compiled, inputs(), modes=("train", "eval", "train"))
    assert report.ok and report.bitwise, report.table(failures_only=True)
    assert (report.steps, report.modes) == (3, ("train", "eval"))
    names = [r.name for r in report.rows]
    assert names[:5] == [f"train/step1/{what}" for what in ("output", "grad", "params", "buffers")] + ["eval/step2/output"]
    assert names[-4:] == ["end/param_names", "end/state_dict/keys", "end/state_dict/order", "end/state_dict/values"]
    assert not torch.equal(weight, before)  # trained in place
    assert torch.equal(weight, compiled.get_parameter("0.weight"))
    assert model.training and compiled.training  # the last step's mode


def test_side_by_side_finds_a_difference_that_shows_only_in_eval_after_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(4, 5), "halving", halve), nn.BatchNorm1d(5))
    report = side_by_side(model, with_bn_momentum(0.2)(copy.deepcopy(model)), inputs(), modes=("eval", "train"))
    assert failing_names(report)[0] == "train/step2/buffers"


def test_side_by_side_refuses_models_that_share_tensors() -> None:
    # Both optimizers would step the same tensors: every later comparison would pass, testing nothing.
    model = Net()
    shared = r"share 4 tensors \(fc.weight, fc.bias, out.weight, out.bias\), .*compile a deep copy"
    with pytest.raises(InvalidModelError, match=shared):
        side_by_side(model, fxpass.compile(model), inputs())


def test_side_by_side_refuses_bad_arguments() -> None:
    with pytest.raises(InvalidModelError, match="side_by_side\\(Net\\): the candidate must be an nn.Module"):
        side_by_side(Net(), lambda m: m, inputs())  # type: ignore[arg-type]
    with pytest.raises(ParityArgumentError, match="^side_by_side: modes must be"):
        side_by_side(Net(), Net(), inputs(), modes=("train", "test"))
    with pytest.raises(ParityArgumentError, match="^side_by_side: atol must be"):
        side_by_side(Net(), Net(), inputs(), atol=-1)
    with pytest.raises(ExampleInputsError):
        side_by_side(Net(), Net(), (torch.randn(2, 7),))


def with_bn_momentum(momentum: float):
    def build(model: nn.Module) -> nn.Module:
        gm = fxpass.compile(model)
        gm.get_submodule("1").momentum = momentum
        return gm

    return build


def test_check_fails_on_buffers_that_differ_only_after_the_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(4, 5), "halving", halve), nn.BatchNorm1d(5))
    assert check(model, inputs(), candidate=with_bn_momentum(0.1), steps=1).ok
    report = check(model, inputs(), candidate=with_bn_momentum(0.2), steps=1, modes=("train",))
    assert failing_names(report)[0] == "train/step1/buffers"
    assert "1.running_mean" in report.failures()[0].detail


def test_check_fails_on_a_candidate_that_raises_as_a_row() -> None:
    class Raising(HandWritten):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    report = check(Net(), inputs(), candidate=Raising.of)
    row = next(r for r in report.rows if r.name == "train/step1/output")
    assert not row.passed and "RuntimeError: boom" in row.detail


def test_check_fails_on_save_load_of_the_runtime_model_as_a_row() -> None:
    report = check(Net(), inputs(), candidate=lambda model: model, steps=1)
    assert failing_names(report) == ["save_load/output"]
    assert "ImitationPicklingError" in report.failures()[0].detail


# -- tolerance -------------------------------------------------------------------------------------


def test_check_with_atol_1e_5_passes_a_candidate_off_by_1e_7_that_fails_bitwise() -> None:
    bitwise = check(Net(), inputs(), candidate=Nudged.of)
    assert not bitwise.ok and "train/step1/output" in failing_names(bitwise)
    row = next(r for r in bitwise.rows if r.name == "train/step1/output")
    assert 0 < row.max_abs_diff < 1e-6 and not row.bitwise
    tolerant = check(Net(), inputs(), candidate=Nudged.of, atol=1e-5)
    assert tolerant.ok, tolerant.table(failures_only=True)
    assert not tolerant.bitwise
    row = next(r for r in tolerant.rows if r.name == "train/step1/output")
    assert row.passed and not row.bitwise and "within tolerance" in row.detail
    with pytest.raises(AssertionError):
        assert_parity(Net(), inputs(), candidate=Nudged.of, atol=1e-9)


# -- the report ------------------------------------------------------------------------------------


def test_report_table_and_to_dict_shape() -> None:
    report = check(Net(), inputs(), steps=2, modes=("train",))
    assert [row.name for row in report.rows[:4]] == [
        "train/step1/output",
        "train/step1/grad",
        "train/step1/params",
        "train/step1/buffers",
    ]
    table = report.table()
    header = table.splitlines()[0].split()
    assert header[:3] == ["check", "passed", "bitwise"] and "detail" in header
    assert len(table.splitlines()) == len(report.rows) + 2
    markdown = report.table("github")
    assert markdown.startswith("| check") and "|---" in markdown
    assert report.table(failures_only=True).count("\n") == 1  # headers only
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["model"] == "Net" and data["candidate"] == "fxpass.compile"
    assert data["compile_counts"] == {"inlined": 2, "module": 0, "opaque": 0}
    assert data["patched_modules"] == 1 and data["kept_calls"] == 0
    assert isinstance(data["time_ratio"], float) and data["time_ratio"] > 0
    assert len(data["rows"]) == len(report.rows)
    assert set(data["rows"][0]) == {"name", "passed", "bitwise", "max_abs_diff", "max_rel_diff", "detail"}
    assert "indicative" in report.summary()


def test_to_dict_serializes_infinite_differences() -> None:
    report = check(Net(), inputs(), candidate=Renamed, steps=1)
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert '"inf"' in text
    assert json.loads(text)["ok"] is False


def test_default_loss_depends_on_the_output_values() -> None:
    out = torch.tensor([1.0, -3.0], requires_grad=True)
    default_loss({"a": out, "n": 3}).backward()
    assert out.grad is not None and torch.equal(out.grad, torch.tensor([1.0, -3.0]))


def test_failures_and_ok_agree() -> None:
    row = ParityRow("x", False, False, 1.0, 1.0, "differs")
    report = ParityReport("M", "c", (ParityRow("y", True, True), row), ("train",), 1, 0.0, 0.0, 0)
    assert not report.ok and report.failures() == (row,)


# -- probes ----------------------------------------------------------------------------------------


def test_probes_export_and_script_pass_on_a_traceable_model() -> None:
    report = check(Net(), inputs(), steps=1, modes=("eval",), probes=("export", "script"))
    assert report.ok, report.table(failures_only=True)
    assert {"probe/export", "probe/script"} <= {row.name for row in report.rows}


class Unscriptable(HandWritten):
    """Exact, but TorchScript cannot compile a forward taking ``*args``."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return super().forward(args[0])


def test_a_failing_probe_is_a_failing_row_not_an_exception() -> None:
    report = check(Net(), inputs(), candidate=Unscriptable.of, steps=1, modes=("eval",), probes=("script",))
    assert failing_names(report) == ["probe/script"]
    row = next(r for r in report.rows if r.name == "probe/script")
    assert not row.passed and row.detail


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [(torch.randn(6, 7),), (torch.randn(6, 4), torch.randn(6, 4)), ()],
    ids=["wrong-shape", "too-many", "none"],
)
def test_check_raises_example_inputs_error_on_inputs_that_do_not_fit(bad: tuple[Any, ...]) -> None:
    with pytest.raises(ExampleInputsError) as caught:
        check(Net(), bad)
    assert isinstance(caught.value, FxpassError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "Net" in message and "example inputs do not fit the model" in message
    assert isinstance(caught.value.__cause__, (RuntimeError, TypeError))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"modes": ("train", "test")},
        {"modes": ()},
        {"atol": -1.0},
        {"probes": ("jit",)},
        {"compile_options": {"scope": "module"}, "candidate": HandWritten.of},
    ],
    ids=["steps", "mode", "no-modes", "atol", "probe", "compile-options-with-candidate"],
)
def test_check_raises_parity_argument_error_on_unusable_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ParityArgumentError):
        check(Net(), inputs(), **kwargs)


def test_check_raises_invalid_model_error_on_a_non_module() -> None:
    with pytest.raises(fxpass.InvalidModelError, match="nn.Module"):
        check(lambda x: x, inputs())  # type: ignore[arg-type]
    with pytest.raises(fxpass.InvalidModelError, match="returned int"):
        check(Net(), inputs(), candidate=lambda model: 3)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("reference", "candidate", "bitwise"),
    [
        ([float("inf"), -float("inf"), 1.0], [float("inf"), -float("inf"), 1.0], True),
        ([float("nan"), 2.0], [float("nan"), 2.0], True),  # NaN where the reference has NaN
        ([0.0, 2.0], [-0.0, 2.0], True),  # -0.0 == 0.0, as torch.equal says
        ([float("inf"), 1.0], [-float("inf"), 1.0], False),
        ([float("nan"), 1.0], [1.0, 1.0], False),
        ([1.0, 2.0], [1.0, 2.0000002], False),
    ],
)
def test_tensor_comparison_of_special_values(reference: list[float], candidate: list[float], bitwise: bool) -> None:
    from fxpass.comparison import compare_all

    result = compare_all({"t": torch.tensor(reference)}, {"t": torch.tensor(candidate)}, 0.0, 0.0)
    assert (result.passed, result.bitwise) == (bitwise, bitwise), result.detail
    assert (result.max_abs == 0) == bitwise
