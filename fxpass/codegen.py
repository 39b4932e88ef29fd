"""The names this module had before the code generation moved: kept for code and saved models.

Models saved by fxpass at 1a1d486 name ``fxpass.codegen.DictWalkCodeGen``, which is
:class:`fxpass.compiled.DictWalkCodeGen` now; the dictionary-walk text surgery this module held
(:func:`dict_walk`, :func:`attribute_chain`, ...) is internal now, in ``fxpass._codegen``, and
its names stay importable from here as they were.
"""

from fxpass._codegen import (
    ENTRY_ATTRIBUTE,
    FX_FORWARD,
    GRAPH_MODE_ATTRIBUTE,
    MODES_ATTRIBUTE,
    attribute_chain,
    dict_walk,
    fx_forward,
    walk_code,
)
from fxpass.compiled import DictWalkCodeGen

__all__ = [
    "DictWalkCodeGen",
    "ENTRY_ATTRIBUTE",
    "FX_FORWARD",
    "GRAPH_MODE_ATTRIBUTE",
    "MODES_ATTRIBUTE",
    "attribute_chain",
    "dict_walk",
    "fx_forward",
    "walk_code",
]
