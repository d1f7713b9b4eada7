"""Joint size/speed search on a trained supernet (paper Sec. 4.2.3, Alg. 1), its random
baseline, BatchNorm recalibration and the statistics of the supernet-as-proxy check (Fig. 5).

One concern per module:

- `calibration`: BatchNorm recalibration and the evaluation loop (`recalibrate_bn`, `evaluate`).
- `moves`: slimming actions and the frontier, joint or fixed expansions (`Action`, `frontier`).
- `objective`: the Mobile Efficiency Score and the stop condition (`MesSpec`, `Target`).
- `evaluator`: parameters, latency and inherited accuracy of sub-networks (`SubnetEvaluator`).
- `greedy`: Algorithm 1's greedy search (`greedy_search`, `SearchResult`, `SearchStep`).
- `random_search`: the random baseline at a budget and random clouds (`random_baseline`, ...).
- `correlation`: inherited against stand-alone accuracy (`proxy_correlation`, `ProxyReport`).
- `plots`: the trajectory plot (`plot_trajectory`).
- `io`: supernet checkpoints, image batches, the searched network's training config, the
  searched network itself (`SearchedNetwork`, `load_searched`: what every tool builds).
- `settings`: the typed, strictly read search config (`SearchSettings`, `load_settings`).
- `pipeline`: the search tool's job end to end (`run_search`).
"""
from __future__ import annotations

from .calibration import evaluate, recalibrate_bn
from .correlation import ProxyReport, proxy_correlation
from .evaluator import SubnetEvaluator
from .greedy import SearchResult, SearchStep, greedy_search
from .io import SearchedNetwork, arch_dict, classification_config, image_batches, load_searched, load_supernet
from .moves import EXPANSION_MODES, Action, fixed_expansion, frontier
from .objective import MesSpec, Target
from .pipeline import run_search
from .plots import plot_trajectory
from .random_search import random_baseline, random_cloud, sample_at_budget
from .settings import (GreedySettings, LutSettings, RandomSettings, SearchSettings, SettingsError, TargetSettings,
                       load_settings)

__all__ = ["Action", "frontier", "EXPANSION_MODES", "fixed_expansion", "recalibrate_bn", "evaluate", "Target",
           "MesSpec", "SubnetEvaluator", "SearchStep", "SearchResult", "arch_dict", "greedy_search",
           "random_baseline", "random_cloud", "sample_at_budget", "plot_trajectory", "ProxyReport",
           "proxy_correlation", "load_supernet", "image_batches", "classification_config", "run_search",
           "SearchedNetwork", "load_searched",
           "SearchSettings", "GreedySettings", "TargetSettings", "RandomSettings", "LutSettings", "SettingsError",
           "load_settings"]
