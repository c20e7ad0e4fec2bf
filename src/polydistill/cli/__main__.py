"""``python -m polydistill.cli``: the same command line as ``polydistill`` (torchrun launches this)."""

from .main import app

app()
