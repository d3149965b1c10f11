"""The errors modelplex raises, at ``ray.serve.exceptions``'s import path.

modelplex's own tree (drawn in ``_errors``), with ``ModelplexError`` at its root. Of Ray's
names it has ``BackPressureError``; it has no ``RayServeException``: catch ``ModelplexError``.
"""

from ._errors import *  # noqa: F403  (the tree, listed once: _errors.__all__)
from ._errors import __all__  # noqa: F401
