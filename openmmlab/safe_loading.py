"""Allow-list what mmengine stores in its checkpoints for torch's safe loading.

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 checkpoints (``load_from``,
``resume``) also hold its message hub (`HistoryBuffer` objects with numpy arrays and scalars, and
references to `HistoryBuffer.min/max/current/mean` that pickle writes as ``getattr(HistoryBuffer,
name)``) and the schedulers' state (a `collections.Counter` of milestones). Only those are
allowed: ``getattr`` is replaced, for unpickling only, by a function that resolves exactly those
four methods and refuses anything else. ``weights_only`` stays on; a checkpoint is untrusted.
"""
from __future__ import annotations

import collections
import pickle
from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def history_buffer_statistic(owner: Any, name: str) -> Any:
    """The unpickler's ``getattr``: only ``HistoryBuffer.<min|max|current|mean>``."""
    if owner is HistoryBuffer and name in _HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refused getattr({owner!r}, {name!r}) in a checkpoint: only mmengine's "
                                 f"HistoryBuffer statistics {_HISTORY_STATISTICS} are allowed")


def _numpy_globals() -> list:
    core = np._core if hasattr(np, "_core") else np.core
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def allow_mmengine_checkpoints() -> None:
    """Add mmengine's checkpoint contents to torch's safe globals (idempotent)."""
    torch.serialization.add_safe_globals([
        HistoryBuffer, collections.Counter, *_numpy_globals(),
        (history_buffer_statistic, "builtins.getattr"),
    ])
