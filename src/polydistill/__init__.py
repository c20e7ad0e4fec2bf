"""polydistill: distill many teacher networks into one compact multi-task student for dense prediction."""

__version__ = "0.1.0"
