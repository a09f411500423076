"""``ltnb.pruning`` is ``ltnb.core.pruning``, the same module object (a public name of the design; see ``ltnb/__init__.py``)."""
import sys

from ltnb.core import pruning as _module

sys.modules[__name__] = _module
