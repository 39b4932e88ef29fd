"""Patch a module's class so that its ``weight`` / ``bias`` read through transforms, and undo it.

:func:`imitate` swaps the class of a module for a freshly created subclass whose ``weight`` and
``bias`` are properties: each returns its transform applied to what the class below returns. The raw
tensors stay where they were, so ``state_dict()`` and the optimizer see raw values.
"""

from __future__ import annotations

import copy
import keyword
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn, SupportsIndex, TypeVar

from torch import Tensor, nn

from imitation_runtime.errors import (
    ImitationPicklingError,
    ImitationRuntimeError,
    ImitationTypeError,
    ImitationValueError,
    NotImitatedError,
)

__all__ = [
    "Imitation",
    "identity",
    "imitate",
    "imitations",
    "is_imitated",
    "type_before_imitations",
    "unimitate",
]

ModuleT = TypeVar("ModuleT", bound=nn.Module)
Transform = Callable[[Tensor], Tensor]

# Marker attributes of every generated class; fxpass reads them to recognise the patch.
_NAME = "__imitation_name__"
_BASE = "__imitation_base__"
_MISSING: Any = object()
_RESERVED = frozenset({"weight", "bias"})


class Imitation(NamedTuple):
    """One layer of imitation, as reported by :func:`imitations`.

    Attributes:
        name: The transform name given to :func:`imitate`.
        thing: The weight transform currently stored under ``name``.
        bias_thing: The bias transform stored under ``name + "_bias"``; None when none was given.
        base: The class that this layer replaced.
    """

    name: str
    thing: Transform
    bias_thing: Transform | None
    base: type


def identity(x: Tensor) -> Tensor:
    """Return ``x`` unchanged: the bias transform stored when :func:`imitate` gets none.

    It is a module-level function rather than a lambda so that it can be named and compared.

    Args:
        x: Any tensor.

    Returns:
        ``x`` itself.

    Example:
        >>> import torch
        >>> t = torch.ones(2)
        >>> identity(t) is t
        True
    """
    return x


def _check_module(module: object, caller: str) -> None:
    if not isinstance(module, nn.Module):
        raise ImitationTypeError(
            f"{caller}() expects an nn.Module, got {type(module).__name__}; "
            "pass the layer itself (e.g. model.fc), not its weight or a model wrapper"
        )


def _layer_classes(module: nn.Module) -> list[type]:
    """The generated classes in the hierarchy of ``module``, first applied first."""
    return [cls for cls in reversed(type(module).__mro__) if _NAME in cls.__dict__]


def _class_attr(cls: type, attr: str) -> Any:
    """The attribute ``attr`` as stored in the class hierarchy, no descriptor invoked; or _MISSING."""
    for klass in cls.__mro__:
        if attr in klass.__dict__:
            return klass.__dict__[attr]
    return _MISSING


def _stores(module: nn.Module) -> dict[str, dict[str, Any]]:
    state = module.__dict__
    return {
        "an attribute": state,
        "a parameter": state.get("_parameters", {}),
        "a buffer": state.get("_buffers", {}),
        "a submodule": state.get("_modules", {}),
    }


def _has_tensor(module: nn.Module, attr: str) -> bool:
    stores = _stores(module)
    return (
        attr in stores["a parameter"]
        or attr in stores["a buffer"]
        or _class_attr(type(module), attr) is not _MISSING
    )


def _occupant(module: nn.Module, attr: str) -> str | None:
    """Say what already holds ``attr`` on ``module``, without evaluating any property."""
    if attr in _RESERVED:
        return "the name of a transformed tensor"
    for cls in _layer_classes(module):
        name = cls.__dict__[_NAME]
        if attr in (name, name + "_bias"):
            return f"used by the earlier imitation {name!r}"
    for what, store in _stores(module).items():
        if attr in store:
            return what
    owner = next((k for k in type(module).__mro__ if attr in k.__dict__), None)
    return None if owner is None else f"a class attribute ({owner.__qualname__}.{attr})"


def _previous(base: type, attr: str) -> Callable[[nn.Module], Any]:
    """Build the reader of ``attr`` as instances of ``base`` return it."""
    found = _class_attr(base, attr)
    if found is not _MISSING:
        if hasattr(type(found), "__get__"):
            return lambda self: found.__get__(self, base)
        return lambda self: found

    def raw(self: nn.Module) -> Any:
        for store in ("_parameters", "_buffers"):
            tensors = self.__dict__[store]
            if attr in tensors:
                return tensors[attr]
        # The property raising AttributeError makes Python fall back to nn.Module.__getattr__,
        # which raises the usual "object has no attribute" message.
        raise AttributeError(attr)

    return raw


def _transformed(base: type, attr: str, transform_name: str) -> property:
    previous = _previous(base, attr)

    def get(self: nn.Module) -> Any:
        value = previous(self)
        if value is None:
            return None
        try:
            return getattr(self, transform_name)(value)
        except AttributeError as e:
            raise ImitationRuntimeError(
                f"{type(self).__name__}.{attr}: transform {transform_name!r} failed with "
                f"AttributeError: {e}; check that the transform attribute exists and works"
            ) from e

    return property(get, doc=f"``{attr}`` transformed by ``self.{transform_name}``.")


def _reduce_ex(self: nn.Module, protocol: SupportsIndex) -> NoReturn:
    names = ", ".join(repr(cls.__dict__[_NAME]) for cls in _layer_classes(self))
    raise ImitationPicklingError(
        f"cannot pickle {type(self).__name__} imitated by {names}: its class is created at run "
        "time by imitation_runtime.imitate and cannot be found by name when loading. "
        "Compile it with fxpass.compile(model) to get a pickleable GraphModule, "
        "or save its state_dict()."
    )


def _deepcopy(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    replica = type(self).__new__(type(self))
    memo[id(self)] = replica
    replica.__dict__.update(copy.deepcopy(self.__dict__, memo))
    return replica


def _copy(self: nn.Module) -> nn.Module:
    replica = type(self).__new__(type(self))
    replica.__dict__.update(self.__dict__)
    return replica


def imitate(
    human: ModuleT,
    name: str,
    thing: Transform,
    bias_thing: Transform | None = None,
) -> ModuleT:
    """Patch the class of ``human`` in place so that its weight / bias read through transforms.

    ``human.weight`` then returns ``thing(w)`` and ``human.bias`` returns ``bias_thing(b)``, where
    ``w`` and ``b`` are what the module returned before. The raw tensors are unchanged and stay in
    ``_parameters``. The transforms are stored as the attributes ``name`` and ``name + "_bias"``
    and looked up on every read, so assigning either attribute changes the transform. Calling
    ``imitate`` again stacks: the new transform is applied to the previous result. A ``bias`` that
    is None stays None. The patched module cannot be pickled (save its ``state_dict()``); it can
    be deep-copied, and :func:`unimitate` undoes the patch.

    Args:
        human: The module to patch; it needs a ``weight`` parameter, buffer or property.
        name: Attribute name for the transform, a Python identifier unused on the module.
        thing: Transform of the weight.
        bias_thing: Transform of the bias; the identity when None.

    Returns:
        ``human`` itself, now an instance of a subclass of its former class with the same name.

    Raises:
        ImitationTypeError: ``human`` is not a module, ``name`` not a str, or a transform is not
            callable.
        ImitationValueError: ``name`` is not a free identifier on ``human``, ``human`` has no
            weight, or ``bias_thing`` is given for a module without bias. ``human`` is then left
            untouched.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)
        >>> imitate(layer, "times2", lambda w: w * 2) is layer
        True
        >>> layer.weight.tolist(), layer.state_dict()["weight"].tolist()
        ([[2.0, 2.0]], [[1.0, 1.0]])
    """
    _check_module(human, "imitate")
    cls: type[nn.Module] = type(human)
    where = f"imitate({cls.__name__}, {name!r})"
    if not isinstance(name, str):
        raise ImitationTypeError(f"{where}: name must be a str, got {type(name).__name__}")
    if not name:
        raise ImitationValueError(f"{where}: name must be a non-empty identifier such as 'quant'")
    if "." in name:
        raise ImitationValueError(
            f"{where}: name must not be dotted; it is stored as one attribute of this module, "
            f"so use e.g. {name.replace('.', '_')!r}"
        )
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ImitationValueError(
            f"{where}: name must be a Python identifier (letters, digits, '_'; not a keyword)"
        )
    if not callable(thing):
        raise ImitationTypeError(
            f"{where}: thing must be callable (Tensor -> Tensor), got {type(thing).__name__}"
        )
    if bias_thing is not None and not callable(bias_thing):
        raise ImitationTypeError(
            f"{where}: bias_thing must be callable (Tensor -> Tensor) or None, "
            f"got {type(bias_thing).__name__}"
        )
    if not _has_tensor(human, "weight"):
        raise ImitationValueError(
            f"{where}: {cls.__name__} has no 'weight' parameter, buffer or property to transform; "
            "imitate a layer with a weight (e.g. nn.Linear), or register it as a parameter"
        )
    has_bias = _has_tensor(human, "bias")
    if bias_thing is not None and not has_bias:
        raise ImitationValueError(
            f"{where}: {cls.__name__} has no 'bias' to transform; pass bias_thing=None"
        )
    for attr in (name, name + "_bias"):
        occupant = _occupant(human, attr)
        if occupant is not None:
            raise ImitationValueError(
                f"{where}: the transform needs the attribute {attr!r}, which is already "
                f"{occupant} of {cls.__name__}; choose another name"
            )

    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        _NAME: name,
        _BASE: cls,
        "weight": _transformed(cls, "weight", name),
        "__reduce_ex__": _reduce_ex,
        "__deepcopy__": _deepcopy,
        "__copy__": _copy,
    }
    if has_bias:
        namespace["bias"] = _transformed(cls, "bias", name + "_bias")
    imitated = type(cls.__name__, (cls,), namespace)

    setattr(human, name, thing)
    setattr(human, name + "_bias", identity if bias_thing is None else bias_thing)
    human.__class__ = imitated
    return human


def imitations(module: nn.Module) -> tuple[Imitation, ...]:
    """List the imitations of ``module`` in the order they were applied.

    Args:
        module: Any module.

    Returns:
        One :class:`Imitation` per :func:`imitate` call, first applied first; empty when none.
        ``bias_thing`` is None where the stored bias transform is :func:`identity`.

    Raises:
        ImitationTypeError: ``module`` is not an nn.Module.

    Example:
        >>> from torch import nn
        >>> layer = imitate(nn.Linear(2, 2), "halve", lambda w: w / 2)
        >>> [(i.name, i.bias_thing, i.base.__name__) for i in imitations(layer)]
        [('halve', None, 'Linear')]
    """
    _check_module(module, "imitations")
    layers = []
    for cls in _layer_classes(module):
        name = cls.__dict__[_NAME]
        bias_thing = getattr(module, name + "_bias")
        layers.append(
            Imitation(
                name=name,
                thing=getattr(module, name),
                bias_thing=None if bias_thing is identity else bias_thing,
                base=cls.__dict__[_BASE],
            )
        )
    return tuple(layers)


def is_imitated(module: nn.Module) -> bool:
    """Say whether :func:`imitate` was applied to ``module``.

    Args:
        module: Any module.

    Returns:
        True when at least one imitation is in the class hierarchy of ``module``.

    Raises:
        ImitationTypeError: ``module`` is not an nn.Module.

    Example:
        >>> from torch import nn
        >>> is_imitated(nn.Linear(2, 2)), is_imitated(imitate(nn.Linear(2, 2), "f", abs))
        (False, True)
    """
    _check_module(module, "is_imitated")
    return bool(_layer_classes(module))


def type_before_imitations(module: nn.Module) -> type:
    """Return the class ``module`` had before the first :func:`imitate`.

    Args:
        module: Any module.

    Returns:
        The class before the first imitation; ``type(module)`` when it is not imitated.

    Raises:
        ImitationTypeError: ``module`` is not an nn.Module.

    Example:
        >>> from torch import nn
        >>> layer = imitate(imitate(nn.Linear(2, 2), "f", abs), "g", abs)
        >>> type_before_imitations(layer) is nn.Linear, type(layer) is nn.Linear
        (True, False)
    """
    _check_module(module, "type_before_imitations")
    layers = _layer_classes(module)
    base: type = layers[0].__dict__[_BASE] if layers else type(module)
    return base


def unimitate(module: ModuleT) -> ModuleT:
    """Undo every :func:`imitate` on ``module`` in place.

    The class from before the first imitation is restored and the transform attributes ``name``
    and ``name + "_bias"`` of every layer are removed; parameters, buffers and other submodules
    are untouched.

    Args:
        module: An imitated module whose top class is an imitation layer.

    Returns:
        ``module`` itself.

    Raises:
        ImitationTypeError: ``module`` is not an nn.Module.
        NotImitatedError: ``module`` is not imitated.
        ImitationValueError: another class patch (e.g. a torch parametrization) was applied after
            an imitation; remove it first. ``module`` is then left untouched.

    Example:
        >>> from torch import nn
        >>> layer = imitate(nn.Linear(2, 2), "f", abs)
        >>> unimitate(layer) is layer, type(layer) is nn.Linear, hasattr(layer, "f")
        (True, True, False)
    """
    _check_module(module, "unimitate")
    top = type(module)
    if not is_imitated(module):
        raise NotImitatedError(f"unimitate({top.__name__}): the module is not imitated")
    layers = []
    cls = top
    while _NAME in cls.__dict__:
        layers.append(cls.__dict__[_NAME])
        cls = cls.__dict__[_BASE]
    if not layers or any(_NAME in klass.__dict__ for klass in cls.__mro__):
        foreign = cls if layers else top
        raise ImitationValueError(
            f"unimitate({top.__name__}): the class {foreign.__qualname__} (from "
            f"{foreign.__module__}) was patched in after an imitation; remove that patch first "
            "(for a parametrization: torch.nn.utils.parametrize.remove_parametrizations), "
            "then call unimitate"
        )
    for name in layers:
        for attr in (name, name + "_bias"):
            module.__dict__.pop(attr, None)
            module.__dict__["_modules"].pop(attr, None)
    module.__class__ = cls
    return module
