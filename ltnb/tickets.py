"""``ltnb.tickets`` is ``ltnb.core.tickets``, the same module object (a public name of the design; see ``ltnb/__init__.py``)."""
import sys

from ltnb.core import tickets as _module

sys.modules[__name__] = _module
