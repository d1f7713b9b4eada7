"""The supernet as a proxy for stand-alone accuracy (the paper's Fig. 5), end to end.

About ten sub-networks spread over the space (the largest, the smallest, and random ones at
evenly spaced ranks of size) are evaluated twice: with weights inherited from the trained supernet
(after BatchNorm recalibration), and after training each from scratch for a short schedule with
the classification LightningModule and Trainer (`python -m classification fit` with the
architecture given as data, `model.arch`). Pearson r, r^2 and Kendall tau between the two say
how well the supernet ranks networks (paper: r^2 = 0.91 on ImageNet).

    python tools/proxy_correlation.py --checkpoint artifacts/search_toy/checkpoints/last.ckpt \
        --data data/toy_cls --epochs 8 --out artifacts/proxy_toy
"""
from __future__ import annotations

import json
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from backbones.supernet import SearchSpace, SubnetConfig

from .search import (ProxyReport, SubnetEvaluator, arch_dict, classification_config, image_batches,
                     load_supernet, proxy_correlation)

__all__ = ["spread_configs", "standalone_config", "train_standalone", "plot_proxy", "run_proxy_check"]

DEFAULT_BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs/classification/toy.yaml"


def spread_configs(space: SearchSpace, count: int, size: Callable[[SubnetConfig], float], seed: int = 0,
                   pool: int = 200) -> list[SubnetConfig]:
    """`count` distinct sub-networks spread over the space, sorted by `size`: the smallest and the
    largest, and between them the random draws at evenly spaced ranks of a pool of `pool`
    uniformly drawn ones (so that small, medium and large networks are all represented)."""
    if count < 3:
        raise ValueError(f"the proxy check needs at least 3 sub-networks, got {count}")
    rng = random.Random(seed)
    smallest, largest = space.smallest(), space.largest()
    drawn = {space.sample(rng) for _ in range(pool)} - {smallest, largest}
    ranked = sorted(drawn, key=lambda c: (size(c), str(c.to_dict())))
    inner = count - 2
    if len(ranked) < inner:
        raise ValueError(f"the space holds too few distinct sub-networks for {count} (found {len(ranked) + 2} "
                         f"in {pool} draws)")
    picks = [ranked[round((i + 1) * (len(ranked) - 1) / (inner + 1))] for i in range(inner)]
    if len(set(picks)) < inner:  # a small pool: fall back to consecutive ranks
        picks = ranked[:inner]
    return [smallest] + sorted(picks, key=lambda c: (size(c), str(c.to_dict()))) + [largest]


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """config["a"]["b"] = value for key "a.b" (sections created where missing)."""
    *sections, leaf = key.split(".")
    node = config
    for name in sections:
        if node.get(name) is None:
            node[name] = {}
        elif not isinstance(node[name], dict):
            raise ValueError(f"override {key!r}: {name!r} is not a section of the config")
        node = node[name]
    node[leaf] = value


def standalone_config(config: SubnetConfig, data_root: str | Path, img_size: int, epochs: int,
                      base_config: str | Path = DEFAULT_BASE_CONFIG,
                      overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `python -m classification fit` config training `config` from scratch: `base_config`
    with `model.arch`, the data root and image size, `epochs` epochs, validation only after the
    last one, and no logger, progress bar, extra callbacks or checkpoint files. `overrides`:
    dotted keys set last (e.g. {"data.num_workers": 0})."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    cfg = classification_config(config, base_config)
    settings = {"data.root": str(data_root), "data.img_size": img_size, "trainer.max_epochs": epochs,
                "trainer.check_val_every_n_epoch": epochs, "trainer.num_sanity_val_steps": 0,
                "trainer.logger": False, "trainer.callbacks": [], "trainer.enable_progress_bar": False,
                "trainer.enable_model_summary": False, "checkpoint.save_top_k": 0, "checkpoint.save_last": False,
                "checkpoint.dirpath": None, **(overrides or {})}
    for key, value in settings.items():
        _set_dotted(cfg, key, value)
    return cfg


def train_standalone(config: SubnetConfig, data_root: str | Path, img_size: int, epochs: int, work_dir: str | Path,
                     base_config: str | Path = DEFAULT_BASE_CONFIG,
                     overrides: Mapping[str, Any] | None = None) -> float:
    """Train `config` from scratch with the classification CLI (in this process) and return its
    top-1 (%) on the validation split after the last epoch. The config used is kept in
    `work_dir/standalone.yaml`; the Trainer's root folder is `work_dir`."""
    import yaml

    from .__main__ import cli

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "standalone.yaml"
    overrides = {"trainer.default_root_dir": str(work_dir), **(overrides or {})}
    path.write_text(yaml.safe_dump(standalone_config(config, data_root, img_size, epochs, base_config, overrides),
                                   sort_keys=False))
    with warnings.catch_warnings():  # the calling tool's own sys.argv is not meant for the CLI
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        run = cli(["fit", "--config", str(path)])
    top1 = run.trainer.callback_metrics.get("val/top1")
    if top1 is None:
        raise RuntimeError(f"stand-alone training of {arch_dict(config)} logged no val/top1")
    return round(100.0 * float(top1), 4)   # torchmetrics' float32 fraction, as a percentage


def plot_proxy(report: ProxyReport, params: Sequence[int], path: str | Path, title: str = "supernet as proxy") -> Path:
    """PNG scatter of stand-alone against inherited top-1 (the paper's Fig. 5), each point
    labelled with its parameter count, r^2 and tau in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(report.inherited, report.standalone, c="tab:blue", s=28)
    for x, y, p in zip(report.inherited, report.standalone, params):
        ax.annotate(f"{p / 1e6:.2f}M", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("top-1 (%), inherited weights + BN recalibration")
    ax.set_ylabel("top-1 (%), trained stand-alone")
    ax.set_title(f"{title}: r$^2$ {report.pearson_r2:.2f}, Kendall $\\tau$ {report.kendall_tau:.2f}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_proxy_check(checkpoint: str | Path, data_root: str | Path, out: str | Path, count: int = 10, epochs: int = 8,
                    seed: int = 0, base_config: str | Path = DEFAULT_BASE_CONFIG, calib_batches: int = 4,
                    batch_size: int = 100, overrides: Mapping[str, Any] | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """The Fig. 5 check of a trained supernet checkpoint on an ImageNet-layout folder: `count`
    sub-networks (`spread_configs`), inherited top-1 on the val split (BatchNorm recalibrated on
    `calib_batches` train batches) against top-1 after `epochs` epochs of stand-alone training
    (`train_standalone` with `base_config` and `overrides`). Writes `out/proxy.json` and
    `out/proxy.png` and returns the JSON's content."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    supernet = load_supernet(checkpoint)
    batches = dict(img_size=supernet.img_size, batch_size=batch_size)
    evaluator = SubnetEvaluator(supernet, None, image_batches(data_root, "val", **batches),
                                image_batches(data_root, "train", **batches), calib_batches)
    configs = spread_configs(supernet.space, count, evaluator.count_params, seed)
    params = [evaluator.count_params(c) for c in configs]
    log(f"proxy: {len(configs)} sub-networks of {min(params) / 1e6:.3f}M to {max(params) / 1e6:.3f}M parameters, "
        f"{epochs} stand-alone epochs each")
    seconds: list[float] = []

    def train(config: SubnetConfig) -> float:
        start = time.perf_counter()
        top1 = train_standalone(config, data_root, supernet.img_size, epochs, out / f"standalone{len(seconds)}",
                                base_config, overrides)
        seconds.append(time.perf_counter() - start)
        log(f"  sub-network {len(seconds)}/{len(configs)} ({params[len(seconds) - 1] / 1e6:.3f}M): stand-alone "
            f"top-1 {top1:.1f} in {seconds[-1]:.0f} s")
        return top1

    torch.manual_seed(seed)
    report = proxy_correlation(evaluator, configs, train)
    result = {"checkpoint": str(checkpoint), "data": str(data_root), "epochs": epochs, "seed": seed,
              "base_config": str(base_config), "overrides": dict(overrides or {}), **report.to_dict(),
              "params": params, "archs": [arch_dict(c) for c in configs], "train_seconds": seconds,
              "seconds": time.perf_counter() - t0}
    (out / "proxy.json").write_text(json.dumps(result, indent=1))
    plot_proxy(report, params, out / "proxy.png")
    log(f"proxy: {report.summary()} in {result['seconds']:.0f} s")
    return result
