"""Kept for callers of the old path (`tools/demo_edge.py`): ExecuTorch lives in
`deploy.runtimes.executorch`."""
from .runtimes.executorch import *  # noqa: F401,F403
from .runtimes.executorch import __all__  # noqa: F401
