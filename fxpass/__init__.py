"""fxpass: class-patched PyTorch models -> plain, pickleable torch.fx GraphModules."""

from fxpass.errors import (
    ExampleInputsError,
    FreezeError,
    FxpassError,
    InvalidModelError,
    NotCompiledError,
    NotScriptableError,
    ParityArgumentError,
    UnsupportedPatchError,
    UntraceableModelError,
)
from fxpass import parity, testing
from fxpass._freeze import freeze
from fxpass.parity_report import ParityReport, ParityRow
from fxpass.record import CompileRecord, EagerModule, KeptCall, Rewrite, ScopeRecord, record_of, scope_record
from fxpass._rewrite import compile, records
from fxpass._tracer import ACTIVATIONS

__all__ = [
    "ACTIVATIONS",
    "CompileRecord",
    "EagerModule",
    "ExampleInputsError",
    "FreezeError",
    "FxpassError",
    "InvalidModelError",
    "KeptCall",
    "NotCompiledError",
    "NotScriptableError",
    "ParityArgumentError",
    "ParityReport",
    "ParityRow",
    "Rewrite",
    "ScopeRecord",
    "UnsupportedPatchError",
    "UntraceableModelError",
    "compile",
    "freeze",
    "parity",
    "record_of",
    "records",
    "scope_record",
    "testing",
]
