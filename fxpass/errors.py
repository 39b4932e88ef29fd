"""Errors raised by fxpass.

Every error derives from :class:`FxpassError` and from the builtin that fits it, so callers can
catch either (``except fxpass.FxpassError`` or ``except TypeError``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CommandError",
    "EntryGuardError",
    "ExampleInputsError",
    "FreezeError",
    "FxpassError",
    "InvalidModelError",
    "NotCompiledError",
    "NotScriptableError",
    "ParityArgumentError",
    "ReadsModeError",
    "UnsupportedPatchError",
    "UntraceableModelError",
]


class FxpassError(Exception):
    """Base class of every error fxpass raises.

    Attributes:
        reason: for an error of tracing a module, why in a few words (module scope records it
            for each module it runs eagerly); None otherwise.
    """

    reason: str | None = None

    def because(self, reason: str) -> FxpassError:
        """Set :attr:`reason`; return the error."""
        self.reason = reason
        return self


class InvalidModelError(FxpassError, TypeError):
    """The object given is not something fxpass can compile (not an ``nn.Module``, say)."""


class UnsupportedPatchError(FxpassError, ValueError):
    """A module carries a class patch, or a use of one, that fxpass cannot reproduce exactly."""


class UntraceableModelError(FxpassError, RuntimeError):
    """torch.fx cannot trace the model's own forward, or the trace would bake in a training mode."""


class NotScriptableError(FxpassError, RuntimeError):
    """TorchScript cannot compile a compiled model as it is (it runs Python at some reads)."""


class FreezeError(FxpassError, RuntimeError):
    """A transform failed while :func:`fxpass.freeze` computed its output."""


class NotCompiledError(FxpassError, ValueError):
    """A GraphModule that :func:`fxpass.compile` did not produce, where one was expected."""


class ExampleInputsError(FxpassError, ValueError):
    """The example inputs do not fit the model: its forward raised on them."""


class ParityArgumentError(FxpassError, ValueError):
    """An argument of :func:`fxpass.parity.check` cannot be used (no steps, an unknown mode or
    probe, ...)."""


class CommandError(FxpassError, ValueError):
    """Bad input at the command line: a path that does not import, a file that is not a model."""


class ReadsModeError(UntraceableModelError):
    """The model's own forward reads ``self.training`` (or a submodule's): traced in one go, its
    graph would be fixed to the current mode. ``fxpass.compile`` traces it once per mode
    instead."""


class CachedInsideTrace(UntraceableModelError):
    """A parametrized tensor is read inside a ``parametrize.cached()`` block that the forward of
    ``module`` entered while being traced: the graph would not enter it at run time (it would
    evaluate the parametrization at every read), so ``module`` is kept as a call (for the model
    itself: it is not traced). Internal: the tracer catches it."""

    def __init__(self, message: str, module: Any) -> None:
        super().__init__(message)
        self.module = module


class Untraceable(Exception):
    """Internal signal: the code being traced cannot be traced faithfully (a transform that is
    then kept as one opaque call)."""


class EntryGuardError(RuntimeError):
    """The generated code is not of the shape the argument guard needs (internal)."""
