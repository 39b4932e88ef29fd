"""fxpass: class-patched PyTorch models -> plain, pickleable torch.fx GraphModules."""

from fxpass.errors import (
    FreezeError,
    FxpassError,
    InvalidModelError,
    NotCompiledError,
    UnsupportedPatchError,
    UntraceableModelError,
)
from fxpass.freeze import freeze
from fxpass.record import CompileRecord, KeptCall, Rewrite, record_of
from fxpass.rewrite import compile, records

__all__ = [
    "CompileRecord",
    "FreezeError",
    "FxpassError",
    "InvalidModelError",
    "NotCompiledError",
    "KeptCall",
    "Rewrite",
    "UnsupportedPatchError",
    "UntraceableModelError",
    "compile",
    "freeze",
    "record_of",
    "records",
]
