"""Recognise runtime class patches and describe them as data.

Three patches are known, each swapping a module's class for a subclass whose attributes are
properties computed from raw tensors:

* ``imitate`` of this project (:mod:`imitation_runtime`): the class carries ``__imitation_name__``
  and ``__imitation_base__``;
* ``imitate`` of qsparse: a class ``imitate.<locals>.Imitation`` from ``qsparse.imitation`` whose
  ``weight`` property closes over the transform's name;
* ``torch.nn.utils.parametrize``: a class ``Parametrized<Base>`` whose properties read
  ``module.parametrizations[name]()``.

A patched module is described by a :class:`PatchStack`: its layers from the bottom up and the class
below them all. Nothing here reads a patched attribute: a transform may be stateful.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Literal

import torch.nn as nn

from fxpass._common import where
from fxpass.errors import UnsupportedPatchError

__all__ = ["Layer", "PatchStack", "LayerKind", "find_patch_stack"]

LayerKind = Literal["imitate", "qsparse", "parametrize"]

#: Attributes an ``imitate`` layer turns into properties.
IMITATED_ATTRIBUTES = ("weight", "bias")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One class patch on a module.

    Attributes:
        kind: which patch made the class.
        name: the transform's name (``imitate``), or ``"parametrizations"``.
        attributes: the attributes the layer turns into properties.
    """

    kind: LayerKind
    name: str
    attributes: tuple[str, ...]

    def transform_attribute(self, attribute: str) -> str:
        """The module attribute holding this layer's transform of ``attribute``."""
        if self.kind == "parametrize":
            return f"parametrizations.{attribute}"
        return self.name if attribute == "weight" else f"{self.name}_bias"


@dataclasses.dataclass(frozen=True)
class PatchStack:
    """Every class patch on one module, bottom layer first.

    Attributes:
        base: the class below every patch; the compiled model holds an instance of it.
        layers: the patches, in the order they were applied.
    """

    base: type
    layers: tuple[Layer, ...]

    @property
    def attributes(self) -> tuple[str, ...]:
        """Every attribute some layer overrides, in first-patched order."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            seen.update(dict.fromkeys(layer.attributes))
        return tuple(seen)

    def transform_attributes(self) -> tuple[str, ...]:
        """The module attributes that hold a transform of an ``imitate`` layer."""
        names: dict[str, None] = {}
        for layer in self.layers:
            if layer.kind != "parametrize":
                names.update(dict.fromkeys(layer.transform_attribute(a) for a in layer.attributes))
        return tuple(names)


def _qsparse_name(cls: type) -> str | None:
    prop = cls.__dict__.get("weight")
    fget = getattr(prop, "fget", None)
    if fget is None or fget.__closure__ is None:
        return None
    cells = dict(zip(fget.__code__.co_freevars, (c.cell_contents for c in fget.__closure__)))
    name = cells.get("name")
    return name if isinstance(name, str) else None


def _layer_of(cls: type, module: nn.Module, path: str) -> Layer | None:
    own = cls.__dict__
    if "__imitation_name__" in own:
        return Layer("imitate", own["__imitation_name__"], IMITATED_ATTRIBUTES)
    if cls.__module__ == "qsparse.imitation" and cls.__qualname__.endswith("<locals>.Imitation"):
        name = _qsparse_name(cls)
        if name is None:
            raise UnsupportedPatchError(
                f"{where(path, module)}: a qsparse Imitation class whose transform name cannot "
                "be read; fxpass supports qsparse 2.0's imitate"
            )
        return Layer("qsparse", name, IMITATED_ATTRIBUTES)
    if cls.__module__ == "torch.nn.utils.parametrize" and cls.__name__.startswith("Parametrized"):
        attributes = tuple(k for k, v in own.items() if isinstance(v, property))
        return Layer("parametrize", "parametrizations", attributes)
    return None


def _importable(cls: type) -> bool:
    """Whether pickle finds ``cls`` by its module and qualified name."""
    found: object = sys.modules.get(cls.__module__)
    for step in cls.__qualname__.split("."):
        found = getattr(found, step, None)
    return found is cls


def _is_dynamic_override(cls: type, module: nn.Module) -> str | None:
    """The name of a tensor attribute that a class pickle cannot find by name (one made at run
    time: a class patch) overrides with a data descriptor, if any."""
    own = cls.__dict__
    if "_fxpass_plain" in own or "_fxpass_base" in own:  # fxpass's own classes
        return None
    # (most classes define none of the names: look each up before asking what it is)
    names = [
        n
        for n in (*module._parameters, *module._buffers, *IMITATED_ATTRIBUTES)
        if (value := own.get(n)) is not None and inspect.isdatadescriptor(value)
    ]
    if not names or _importable(cls):
        return None
    return names[0]


def find_patch_stack(module: nn.Module, path: str = "") -> PatchStack | None:
    """Describe the class patches on ``module``, or return None when it has none.

    Args:
        module: any module; its patched attributes are never read.
        path: the module's path in its model, for error messages.

    Returns:
        The stack of patches, or None for an unpatched module.

    Raises:
        UnsupportedPatchError: an unknown class patch overrides a tensor attribute.

    Example:
        >>> import torch.nn as nn
        >>> from imitation_runtime import imitate
        >>> stack = find_patch_stack(imitate(nn.Linear(2, 2), "twice", lambda w: 2 * w))
        >>> stack.base.__name__, [(l.kind, l.name) for l in stack.layers]
        ('Linear', [('imitate', 'twice')])
    """
    layers: list[Layer] = []
    base: type = type(module)
    for cls in type(module).__mro__:
        layer = _layer_of(cls, module, path)
        if layer is None:
            base = cls
            break
        layers.append(layer)
    for cls in base.__mro__:
        if _layer_of(cls, module, path) is not None:
            raise UnsupportedPatchError(
                f"{where(path, base)}: a class patch sits below the unpatched class "
                f"{base.__qualname__}; fxpass needs every patch class on top of the module's "
                "own class"
            )
        overridden = _is_dynamic_override(cls, module)
        if overridden is not None:
            raise UnsupportedPatchError(
                f"{where(path, base)}: class {cls.__qualname__} from {cls.__module__} "
                f"overrides {overridden!r} with a property but is not a patch fxpass knows "
                "(imitation_runtime.imitate, qsparse's imitate, torch parametrize), and pickle "
                "cannot find it by name; apply the transform with imitation_runtime.imitate instead"
            )
    if not layers:
        return None
    return PatchStack(base=base, layers=tuple(reversed(layers)))
