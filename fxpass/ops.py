"""What the generated code of a compiled model calls.

These names are part of every saved GraphModule (pickles refer to them by import path): keep them
where they are. The compiled GraphModule itself lives in :mod:`fxpass.compiled`; models saved
when it lived here still load (the names resolve through this module).
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

import cloudpickle
import torch
import torch.fx
import torch.nn as nn

from fxpass import reading
from fxpass._common import first_proxy, moved_names, owner_of

__all__ = [
    "ByValue",
    "Opaque",
    "call_with_overrides",
    "parametrized",
    "picklable_by_reference",
]

_MISSING = object()


def call_with_overrides(
    module: nn.Module, overrides: dict[str, Any], args: tuple, kwargs: dict[str, Any]
) -> Any:
    """Call ``module(*args, **kwargs)`` with some of its tensors replaced for this call only.

    fxpass 0.1 emitted this for a patched module (or the smallest module around it that reads its
    tensors) whose forward must stay a call at run time, the transforms computed by graph nodes
    and handed in through ``overrides``. A kept call is now a plain ``call_module`` whose patched
    modules read as at run time (:mod:`fxpass.reading`); this stays for the models saved then.

    Args:
        module: the module to call.
        overrides: dotted attribute path (relative to ``module``) -> value seen during the call.
        args: positional arguments of the call.
        kwargs: keyword arguments of the call.

    Returns:
        Whatever the module returns.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(2, 1)
        >>> x = torch.ones(1, 2)
        >>> out = call_with_overrides(lin, {"weight": torch.zeros(1, 2), "bias": torch.ones(1)}, (x,), {})
        >>> out.tolist(), torch.equal(lin(x), out)
        ([[1.0]], False)
    """
    # torch.fx re-tracing the generated code (when unpickling) passes proxies for the
    # transformed tensors; a real call passes tensors. One look decides.
    first = next(iter(overrides.values()), None)
    proxy = first if isinstance(first, torch.fx.Proxy) else None
    if proxy is None and not overrides:
        proxy = first_proxy((args, kwargs))
    if proxy is not None:
        return proxy.tracer.create_proxy(
            "call_function", call_with_overrides, (module, overrides, args, kwargs), {}
        )
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for path, value in overrides.items():
            owner, attribute = owner_of(module, path)
            # An instance attribute shadows both _parameters (reached through __getattr__) and a
            # missing attribute: the forward reads `value`, and the real state stays untouched.
            namespace = owner.__dict__
            saved.append((namespace, attribute, namespace.get(attribute, _MISSING)))
            namespace[attribute] = value
        return module(*args, **kwargs)
    finally:
        for namespace, attribute, previous in reversed(saved):
            if previous is _MISSING:
                namespace.pop(attribute, None)
            else:
                namespace[attribute] = previous


def parametrized(parametrization: nn.Module, *originals: Any) -> Any:
    """The value of a parametrized tensor: ``parametrization()``, once per
    ``torch.nn.utils.parametrize.cached()`` block or at every call outside one, as torch's own
    property computes it (:func:`fxpass.reading.evaluate_parametrization`).

    The graph calls this for each read of a parametrized tensor, with the parametrization's
    ``ParametrizationList`` and its original tensors: when torch.fx re-traces the generated code
    (unpickling) the originals are proxies, and the call is recorded again, not evaluated.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torch.nn.utils import parametrize
        >>> class Twice(nn.Module):
        ...     def forward(self, w):
        ...         return 2 * w
        >>> lin = parametrize.register_parametrization(nn.Linear(2, 2), "weight", Twice())
        >>> plist = lin.parametrizations.weight
        >>> torch.equal(parametrized(plist, plist.original), lin.weight)
        True
    """
    proxy = next((o for o in originals if isinstance(o, torch.fx.Proxy)), None)
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", parametrized, (parametrization, *originals), {})
    return reading.evaluate_parametrization(parametrization)


def picklable_by_reference(fn: Callable) -> bool:
    """Whether plain pickle saves ``fn`` (by its import path)."""
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - any failure means "not by reference"
        return False
    return True


class ByValue:
    """A callable that pickles the function it wraps by value (with cloudpickle).

    fxpass wraps the local functions it finds among a copied module's hooks (torch's
    ``weight_norm`` registers one), which plain pickle cannot save.

    Args:
        fn: the function to call.

    Example:
        >>> import pickle
        >>> pickle.loads(pickle.dumps(ByValue(lambda x: x + 1)))(1)
        2
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_loads, (cloudpickle.dumps(self.fn),))


def _loads(payload: bytes) -> ByValue:
    return ByValue(pickle.loads(payload))


class Opaque(nn.Module):
    """A transform that torch.fx cannot trace, kept as one call.

    It pickles its function by reference when the function is importable and by value (with
    cloudpickle) otherwise, so the compiled model stays pickleable either way.

    Args:
        fn: the transform, called with the raw tensor.

    Example:
        >>> import pickle, torch
        >>> op = Opaque(lambda w: w if w.sum() > 0 else -w)
        >>> pickle.loads(pickle.dumps(op))(torch.tensor([-2.0])).tolist()
        [2.0]
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if not picklable_by_reference(self.fn):
            state = dict(state, fn=None, _fn_by_value=cloudpickle.dumps(self.fn))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        by_value = state.pop("_fn_by_value", None)
        if by_value is not None:
            state["fn"] = pickle.loads(by_value)
        super().__setstate__(state)


# Models saved before the compiled GraphModule moved to fxpass.compiled name its classes and
# functions here (fxpass.ops._rebuild_compiled, fxpass.ops.Preserved, ...).
__getattr__ = moved_names(__name__, "fxpass.compiled")
