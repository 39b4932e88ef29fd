"""fxpass: class-patched PyTorch models -> plain, pickleable torch.fx GraphModules."""

from fxpass.errors import FxpassError, InvalidModelError, UnsupportedPatchError, UntraceableModelError
from fxpass.record import CompileRecord, KeptCall, Rewrite, record_of
from fxpass.rewrite import compile

__all__ = [
    "CompileRecord",
    "FxpassError",
    "InvalidModelError",
    "KeptCall",
    "Rewrite",
    "UnsupportedPatchError",
    "UntraceableModelError",
    "compile",
    "record_of",
]
