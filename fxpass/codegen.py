"""Where models saved by fxpass at 1a1d486 find their code generator.

Those pickles name ``fxpass.codegen.DictWalkCodeGen``; the generator is
:class:`fxpass.compiled.DictWalkCodeGen` now, and the text surgery behind it is internal
(``fxpass._codegen``). Nothing else lives here: import from :mod:`fxpass.compiled`.
"""

from fxpass.compiled import DictWalkCodeGen

__all__ = ["DictWalkCodeGen"]
