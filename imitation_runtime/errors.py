"""Errors raised by :mod:`imitation_runtime`.

Every error derives from :class:`ImitationError` and from the builtin exception a caller would
expect, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import pickle

__all__ = [
    "ImitationError",
    "ImitationPicklingError",
    "ImitationRuntimeError",
    "ImitationTypeError",
    "ImitationValueError",
    "NotImitatedError",
]


class ImitationError(Exception):
    """Base class of every error raised by this package."""


class ImitationTypeError(ImitationError, TypeError):
    """An argument has the wrong type (not a module, a name that is not a str, a non-callable)."""


class ImitationValueError(ImitationError, ValueError):
    """An argument has the right type but cannot be used (bad or clashing name, nothing to patch)."""


class NotImitatedError(ImitationError, ValueError):
    """:func:`~imitation_runtime.unimitate` was called on a module that is not imitated."""


class ImitationPicklingError(ImitationError, pickle.PicklingError):
    """An imitated module was pickled; its class only exists at run time."""


class ImitationRuntimeError(ImitationError, RuntimeError):
    """Reading a transformed ``weight`` / ``bias`` raised an ``AttributeError``.

    The error is converted because an ``AttributeError`` escaping a property makes Python fall back
    to ``nn.Module.__getattr__``, which would silently return the raw, untransformed tensor.
    """
