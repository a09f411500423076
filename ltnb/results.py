"""``ltnb.results`` is ``ltnb.analysis.results``, the same module object (a public name of the design; see ``ltnb/__init__.py``)."""
import sys

from ltnb.analysis import results as _module

sys.modules[__name__] = _module
