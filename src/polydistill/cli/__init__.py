"""The ``polydistill`` command line: parsing and printing over the public API (:mod:`polydistill`).

``python -m polydistill.cli`` runs it too (what ``torchrun`` and ``accelerate launch`` start).
"""

from .main import app

__all__ = ["app"]
