"""Runtime class patching that makes a module's ``weight`` / ``bias`` read through transforms."""

from imitation_runtime.errors import (
    ImitationError,
    ImitationPicklingError,
    ImitationRuntimeError,
    ImitationTypeError,
    ImitationValueError,
    NotImitatedError,
)
from imitation_runtime.patch import (
    Imitation,
    identity,
    imitate,
    imitations,
    is_imitated,
    type_before_imitations,
    unimitate,
)

__all__ = [
    "Imitation",
    "ImitationError",
    "ImitationPicklingError",
    "ImitationRuntimeError",
    "ImitationTypeError",
    "ImitationValueError",
    "NotImitatedError",
    "identity",
    "imitate",
    "imitations",
    "is_imitated",
    "type_before_imitations",
    "unimitate",
]
