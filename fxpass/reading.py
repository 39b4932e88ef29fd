"""Patched reads outside the graph: a module-scope model's eager code reads what the runtime reads.

A module-scope compile keeps modules torch.fx cannot trace as the model's own code, run eagerly
(a transformers attention block, a forward that branches on data or on ``self.training``). That
code may read a patched tensor itself (``x @ self.dt_proj.weight.t()``, ``self.out_proj.weight``
handed to a functional call), and the runtime model answers such a read with the transformed
tensor, evaluated at that read. The compiled model holds only raw tensors, so fxpass reproduces
the read:

* every patched module of a module-scope compile keeps its transforms (functions pickle by value
  when they cannot by reference, modules stay in the tree) and a :class:`ReadPlan` that says how
  its patches stack, and its class is a *reading class* (:func:`reading_class`): its own class
  below the patches, whose attribute fallback (``__getattr__``) evaluates the plan for a patched
  attribute while eager code of the model runs, as the runtime patch's properties do: at every
  read, in read order, stateful transforms included;
* while an eager module of the model runs (its ``forward`` is an :class:`EagerForward`), this
  thread reads that way; at any other time a patched attribute is the raw tensor, so graphs,
  ``state_dict()``, pickling and torch.fx's own machinery see what they always saw.

The same mechanism makes a module kept as a call inside a graph exact (model scope too): its
``forward`` is an :class:`EagerForward`, so the patched modules inside it read as at run time
however often its forward reads them. Compiled graphs never read through the fallback, also while
eager code runs: their generated code reads the tree's dictionaries (:mod:`fxpass._codegen`) and
applies the transforms as nodes. (Graphs saved by fxpass 0.1 hand tensors to their kept calls as
instance attributes, :func:`fxpass.ops.call_with_overrides`, which Python finds before any
fallback.)

The names here are part of saved models (pickles refer to them by import path): keep them where
they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from typing import Any, Iterator

import torch.nn as nn
from torch.fx import _symbolic_trace
from torch.nn.utils import parametrize as _parametrize

__all__ = [
    "PLAN",
    "EagerForward",
    "ReadLayer",
    "ReadPlan",
    "eager_reads",
    "evaluate_parametrization",
    "has_eager_forward",
    "install_eager_forward",
    "class_defined",
    "is_reading_class",
    "read_value",
    "reading_class",
    "reading_getattr",
    "reads_exactly",
    "remove_eager_forward",
    "standard_lookup",
    "undress",
]

#: Key of a patched module's :class:`ReadPlan` in its ``__dict__``.
PLAN = "_fxpass_reads"


@dataclasses.dataclass(frozen=True)
class ReadLayer:
    """One class patch of a module, as its reads evaluate it.

    Attributes:
        kind: ``"imitate"``, ``"qsparse"`` or ``"parametrize"``.
        attributes: the attributes the layer transforms.
        transforms: per attribute, the module attribute holding its transform (unused for
            ``parametrize``, whose transform is ``parametrizations[attribute]``).
    """

    kind: str
    attributes: tuple[str, ...]
    transforms: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """How a patched module's attributes are computed from its raw tensors.

    Attributes:
        layers: the patches, bottom first.
        attributes: every patched attribute, in first-patched order.
        from_class: the patched attributes whose raw value the module's plain class defines (a
            property of its own) rather than its parameters or buffers.
        steps: derived, per attribute: whether its value starts from its parametrization (else
            from the raw tensor), and the ``(kind, transform attribute)`` of each patch applied
            after that, bottom first.
    """

    layers: tuple[ReadLayer, ...]
    attributes: tuple[str, ...]
    from_class: frozenset[str] = frozenset()
    steps: dict[str, tuple[bool, tuple[tuple[str, str], ...]]] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        steps = {}
        for attribute in self.attributes:
            parametrized, chain = False, []
            for layer in self.layers:
                if attribute not in layer.attributes:
                    continue
                if layer.kind == "parametrize":  # its value ignores the layers below
                    parametrized, chain = True, []
                else:
                    chain.append((layer.kind, layer.transforms[layer.attributes.index(attribute)]))
            steps[attribute] = (parametrized, tuple(chain))
        object.__setattr__(self, "steps", steps)


# -- evaluating a read -----------------------------------------------------------------------------

_MISSING = object()


def _plain_class(module: nn.Module) -> type:
    cls = type(module)
    return getattr(cls, "_fxpass_plain", cls)


def _raw(module: nn.Module, attribute: str, from_class: bool) -> Any:
    """The attribute as the class below every patch returns it (the runtime patches' rule)."""
    if from_class:
        plain = _plain_class(module)
        found = next(klass.__dict__[attribute] for klass in plain.__mro__ if attribute in klass.__dict__)
        return found.__get__(module, plain) if hasattr(type(found), "__get__") else found
    namespace = module.__dict__
    tensor = namespace["_parameters"].get(attribute, _MISSING)
    if tensor is _MISSING:
        tensor = namespace["_buffers"].get(attribute, _MISSING)
        if tensor is _MISSING:
            # Raising AttributeError from __getattr__ makes the caller see the usual message.
            raise AttributeError(f"'{_plain_class(module).__name__}' object has no attribute '{attribute}'")
    if _symbolic_trace._is_fx_tracing_flag:
        # torch.fx traces this code (it patches nn.Module.__getattr__): the proxy of the raw
        # tensor, so that the transforms after it are traced too.
        return nn.Module.__getattr__(module, attribute)
    return tensor


def evaluate_parametrization(parametrization: nn.Module) -> Any:
    """``parametrization()`` (a ``ParametrizationList``), honouring ``parametrize.cached()`` as
    torch's property does: inside a ``cached()`` block one evaluation per parametrized tensor,
    outside one per read. Graphs and eager reads share the cache entry, keyed by the list."""
    if getattr(_parametrize, "_cache_enabled", 0):
        cache = _parametrize._cache
        key = (id(parametrization), None)  # (torch's own keys are (id(module), name))
        tensor = cache.get(key)
        if tensor is None:
            tensor = parametrization()
            cache[key] = tensor
        return tensor
    return parametrization()


def _parametrized(module: nn.Module, attribute: str) -> Any:
    return evaluate_parametrization(module._modules["parametrizations"][attribute])  # type: ignore[index]


def read_value(module: nn.Module, attribute: str) -> Any:
    """What the runtime patch returns for ``module.<attribute>``, from the module's plan.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(2, 2)
        >>> lin.__dict__[PLAN] = ReadPlan((ReadLayer("imitate", ("weight",), ("neg",)),), ("weight",))
        >>> lin.neg = lambda w: -w
        >>> bool((read_value(lin, "weight") == -lin.weight).all())
        True
    """
    plan = module.__dict__[PLAN]
    parametrized, chain = plan.steps[attribute]
    value = _parametrized(module, attribute) if parametrized else _raw(module, attribute, attribute in plan.from_class)
    for kind, transform in chain:
        if value is None and kind == "imitate":
            continue  # imitation_runtime never calls a transform on a missing bias
        value = getattr(module, transform)(value)
    return value


# -- when eager code runs --------------------------------------------------------------------------


class _Eager(threading.local):
    # one entry per eager call open in this thread
    open: list[None]

    def __init__(self) -> None:
        self.open = []


_EAGER = _Eager()


@contextlib.contextmanager
def eager_reads() -> Iterator[None]:
    """Within the block, this thread's patched reads are evaluated as at run time."""
    _EAGER.open.append(None)
    try:
        yield
    finally:
        _EAGER.open.pop()


def reads_open() -> bool:
    """Whether this thread's patched reads are evaluated as at run time now."""
    return bool(_EAGER.open)


@contextlib.contextmanager
def reads_closed() -> Iterator[None]:
    """Within the block, this thread's patched reads are the classes' own again (inside an eager
    read window: a compiled graph reading raw tensors with attribute lookups)."""
    opened = _EAGER.open
    _EAGER.open = []
    try:
        yield
    finally:
        _EAGER.open = opened


class EagerForward:
    """The ``forward`` of an eager module of a module-scope compile, set as an instance attribute:
    its own forward, run with this thread reading patched tensors as at run time (see the module
    docstring), also when an eager parent calls it.

    An instance attribute rather than a hook keeps ``nn.Module.__call__`` on its fast path. It
    answers ``inspect.signature`` (transformers' ``generate`` reads it), ``__code__`` and
    ``__name__`` as the forward it runs; it has no ``__func__``, since calling that would skip it.

    Args:
        module: the module.
        inner: a ``forward`` the module held as an instance attribute already, run instead of its
            class's.
    """

    def __init__(self, module: nn.Module, inner: Any = None) -> None:
        self.module = module
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        opened = _EAGER.open
        opened.append(None)
        try:
            if self.inner is not None:
                return self.inner(*args, **kwargs)
            return type(self.module).forward(self.module, *args, **kwargs)
        finally:
            opened.pop()

    def _forward(self) -> Any:
        return self.inner if self.inner is not None else type(self.module).forward.__get__(self.module)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._forward())

    @property
    def __code__(self) -> Any:  # (torch.export names its shape environment after it)
        return getattr(self._forward(), "__code__", EagerForward.__call__.__code__)

    @property
    def __name__(self) -> str:
        return getattr(self._forward(), "__name__", "forward")

    def __repr__(self) -> str:
        return f"fxpass.reading.EagerForward({type(self.module).__name__})"


def install_eager_forward(module: nn.Module) -> None:
    """Make ``module``'s calls read patched tensors as the runtime does (see :class:`EagerForward`)."""
    namespace = module.__dict__
    namespace["forward"] = EagerForward(module, namespace.get("forward"))


def has_eager_forward(module: nn.Module) -> bool:
    """Whether :func:`install_eager_forward` was applied to ``module``."""
    return isinstance(module.__dict__.get("forward"), EagerForward)


def remove_eager_forward(module: nn.Module) -> None:
    """Undo :func:`install_eager_forward` (``fxpass.freeze`` leaves no patch to read)."""
    namespace = module.__dict__
    forward = namespace.get("forward")
    if isinstance(forward, EagerForward):
        if forward.inner is not None:
            namespace["forward"] = forward.inner
        else:
            del namespace["forward"]


# -- reading classes -------------------------------------------------------------------------------


def reading_getattr(self: nn.Module, name: str) -> Any:
    """``__getattr__`` of reading classes (and of compiled parts): a patched attribute, read while
    eager code runs, is evaluated as at run time; anything else is the class's own lookup (found
    at call time, so that torch.fx's tracing patch of ``nn.Module.__getattr__`` applies)."""
    if _EAGER.open:
        plan = self.__dict__.get(PLAN)
        if plan is not None and name in plan.steps:
            return read_value(self, name)
    return type(self)._fxpass_getattr_from.__getattr__(self, name)


def _reading_property(attribute: str, descriptor: Any) -> property:
    """For a patched attribute that the plain class defines itself (a property)."""

    def get(self: nn.Module) -> Any:
        if _EAGER.open and PLAN in self.__dict__:
            return read_value(self, attribute)
        return descriptor.__get__(self, type(self))

    return property(get)


def _reduce_ex(self: nn.Module, protocol: Any) -> tuple[Any, ...]:
    cls = type(self)
    return (_rebuild, (cls._fxpass_plain, cls._fxpass_descriptors), self.__getstate__())


def _rebuild(plain: type, descriptors: tuple[str, ...]) -> nn.Module:
    cls = reading_class(plain, descriptors)
    return cls.__new__(cls)


_READING_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def reading_class(plain: type, descriptors: tuple[str, ...] = ()) -> type:
    """The class a patched module of a module-scope compile wears: ``plain`` (its class below the
    patches) with the attribute fallback described in the module docstring.

    Args:
        plain: the module's class below its patches.
        descriptors: patched attributes that ``plain`` defines as class attributes (properties
            of its own): these get a property, since Python finds them before any fallback.

    The class has ``plain``'s name and module; an instance pickles (and deep-copies) through this
    function, so the class itself is never looked up by name.

    Example:
        >>> import torch.nn as nn
        >>> cls = reading_class(nn.Linear)
        >>> issubclass(cls, nn.Linear), cls.__name__, reading_class(nn.Linear) is cls
        (True, 'Linear', True)
    """
    if getattr(plain, "_fxpass_plain", None) is plain:  # already a reading class
        plain = plain.__bases__[0]
    key = (plain, descriptors)
    found = _READING_CLASSES.get(key)
    if found is None:
        namespace: dict[str, Any] = {
            name: _reading_property(name, _class_attribute(plain, name)) for name in descriptors
        }
        namespace.update(
            __getattr__=reading_getattr,
            __reduce_ex__=_reduce_ex,
            __module__=plain.__module__,
            __qualname__=plain.__qualname__,
            _fxpass_plain=plain,
            _fxpass_getattr_from=plain,
            _fxpass_descriptors=descriptors,
        )
        found = _READING_CLASSES[key] = type(plain.__name__, (plain,), namespace)
    return found


def _class_attribute(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    raise AttributeError(name)


def class_defined(plain: type, attributes: tuple[str, ...]) -> tuple[str, ...]:
    """The ``attributes`` that ``plain`` defines as class attributes."""
    return tuple(a for a in attributes if any(a in klass.__dict__ for klass in plain.__mro__))


def is_reading_class(cls: type) -> bool:
    """Whether ``cls`` was made by :func:`reading_class`."""
    return "_fxpass_plain" in cls.__dict__


def standard_lookup(cls: type) -> bool:
    """Whether attribute lookup on instances of ``cls`` ends in ``nn.Module.__getattr__`` for the
    tree's names (the reading fallback changes only patched reads of eager code)."""
    fallback = getattr(cls, "__getattr__", None)
    if fallback is nn.Module.__getattr__:
        return True
    if fallback is reading_getattr:
        return standard_lookup(cls._fxpass_getattr_from)  # type: ignore[attr-defined]
    return False


def undress(module: nn.Module) -> None:
    """Give ``module`` its plain class again and drop its plan (``fxpass.freeze``)."""
    cls = type(module)
    if is_reading_class(cls):
        object.__setattr__(module, "__class__", cls._fxpass_plain)  # type: ignore[attr-defined]
    module.__dict__.pop(PLAN, None)


def reads_exactly(module: nn.Module) -> bool:
    """Whether ``module`` holds a :class:`ReadPlan` (its eager reads are evaluated as at run time).

    Example:
        >>> reads_exactly(nn.Linear(2, 2))
        False
    """
    return PLAN in module.__dict__
