"""Errors raised by fxpass.

Every error derives from :class:`FxpassError` and from the builtin that fits it, so callers can
catch either (``except fxpass.FxpassError`` or ``except TypeError``).
"""

from __future__ import annotations

__all__ = [
    "FreezeError",
    "FxpassError",
    "InvalidModelError",
    "NotCompiledError",
    "NotScriptableError",
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
