"""The demo: the user's story on built-in ShapeScenes data (``polydistill demo``).

Not a library: experiments and benchmarks use the public API (:mod:`polydistill`).
"""

from .presets import PRESETS, Preset
from .story import run_demo

__all__ = ["PRESETS", "Preset", "run_demo"]
