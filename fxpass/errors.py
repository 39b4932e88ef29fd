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
    "UnsupportedPatchError",
    "UntraceableModelError",
]


class FxpassError(Exception):
    """Base class of every error fxpass raises."""


class InvalidModelError(FxpassError, TypeError):
    """The object given is not something fxpass can compile (not an ``nn.Module``, say)."""


class UnsupportedPatchError(FxpassError, ValueError):
    """A module carries a class patch, or a use of one, that fxpass cannot reproduce exactly."""


class UntraceableModelError(FxpassError, RuntimeError):
    """torch.fx cannot trace the model's own forward, or the trace would bake in a training mode."""


class FreezeError(FxpassError, RuntimeError):
    """A transform failed while :func:`fxpass.freeze` computed its output."""


class NotCompiledError(FxpassError, ValueError):
    """A GraphModule that :func:`fxpass.compile` did not produce, where one was expected."""
