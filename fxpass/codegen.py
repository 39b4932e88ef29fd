"""The names this module had before the code generation moved: kept for code and saved models.

Models saved by fxpass at 1a1d486 name ``fxpass.codegen.DictWalkCodeGen``, which is
:class:`fxpass.compiled.DictWalkCodeGen` now; the dictionary-walk text surgery this module held
(``dict_walk``, ``attribute_chain``, ...) is internal now, in ``fxpass._codegen``, and its names
stay importable from here as they were.
"""

from fxpass import _codegen
from fxpass._common import moved_names
from fxpass.compiled import DictWalkCodeGen

__all__ = ["DictWalkCodeGen", *_codegen.__all__]

__getattr__ = moved_names(__name__, "fxpass._codegen", names=_codegen.__all__)
