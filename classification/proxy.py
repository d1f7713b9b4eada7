"""The supernet as a proxy for stand-alone accuracy (the paper's Fig. 5), end to end.

About ten sub-networks spread over the space (the largest, the smallest, and random ones at
evenly spaced ranks of size) are evaluated twice: with weights inherited from the trained supernet
(after BatchNorm recalibration), and after training each from scratch for a short schedule with
the classification command line (`python -m classification fit` in a child process, the
architecture given as data, `model.arch`, on top of a base classification config the caller
passes). Pearson r, r^2 and Kendall tau between the two say how well the supernet ranks networks
(paper: r^2 = 0.91 on ImageNet).

    python tools/proxy_correlation.py --checkpoint artifacts/search_toy/checkpoints/last.ckpt \
        --data data/toy_cls --epochs 8 --base-config configs/classification/toy.yaml --out artifacts/proxy_toy
"""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from backbones.errors import UsageError
from backbones.supernet import SearchSpace, SubnetConfig

from .search import (ProxyReport, SubnetEvaluator, arch_dict, classification_config, image_batches,
                     load_supernet, proxy_correlation)
from .search.io import read_config

__all__ = ["spread_configs", "standalone_config", "train_standalone", "plot_proxy", "run_proxy_check"]

BaseConfig = str | Path | Mapping[str, Any]


def spread_configs(space: SearchSpace, count: int, size: Callable[[SubnetConfig], float], seed: int = 0,
                   pool: int = 200) -> list[SubnetConfig]:
    """`count` distinct sub-networks spread over the space, sorted by `size`: the smallest and the
    largest, and between them the random draws at evenly spaced ranks of a pool of `pool`
    uniformly drawn ones (so that small, medium and large networks are all represented)."""
    if count < 3:
        raise UsageError(f"the proxy check needs at least 3 sub-networks, got {count}")
    rng = random.Random(seed)
    smallest, largest = space.smallest(), space.largest()
    drawn = {space.sample(rng) for _ in range(pool)} - {smallest, largest}
    ranked = sorted(drawn, key=lambda c: (size(c), str(c.to_dict())))
    inner = count - 2
    if len(ranked) < inner:
        raise UsageError(f"the space holds too few distinct sub-networks for {count} (found {len(ranked) + 2} "
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
            raise UsageError(f"override {key!r}: {name!r} is not a section of the config")
        node = node[name]
    node[leaf] = value


def standalone_config(config: SubnetConfig, data_root: str | Path, img_size: int, epochs: int,
                      base_config: BaseConfig, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `python -m classification fit` config training `config` from scratch: `base_config`
    with `model.arch`, the data root and image size, `epochs` epochs, validation only after the
    last one, and no logger, progress bar, extra callbacks or checkpoint files.

    Args:
        config: the sub-network.
        data_root: ImageNet-layout folder.
        img_size: training and validation image size (the supernet's).
        epochs: training epochs (>= 1).
        base_config: a classification config (path or dict), e.g. configs/classification/toy.yaml
            of the source tree; a missing file is an error saying so.
        overrides: dotted keys set last (e.g. {"data.num_workers": 0}).
    """
    if epochs < 1:
        raise UsageError(f"epochs must be >= 1, got {epochs}")
    cfg = classification_config(config, base_config)
    settings = {"data.root": str(data_root), "data.img_size": img_size, "trainer.max_epochs": epochs,
                "trainer.check_val_every_n_epoch": epochs, "trainer.num_sanity_val_steps": 0,
                "trainer.logger": False, "trainer.callbacks": [], "trainer.enable_progress_bar": False,
                "trainer.enable_model_summary": False, "checkpoint.save_top_k": 0, "checkpoint.save_last": False,
                "checkpoint.dirpath": None, **(overrides or {})}
    for key, value in settings.items():
        _set_dotted(cfg, key, value)
    return cfg


def _last_logged(metrics_csv: Path, name: str) -> float | None:
    """The last value of column `name` in a CSVLogger's metrics.csv (None: never logged)."""
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(newline="") as f:
        values = [row[name] for row in csv.DictReader(f) if row.get(name)]
    return float(values[-1]) if values else None


def train_standalone(config: SubnetConfig, data_root: str | Path, img_size: int, epochs: int, work_dir: str | Path,
                     base_config: BaseConfig, overrides: Mapping[str, Any] | None = None) -> float:
    """Train `config` from scratch with the classification command line and return its top-1 (%)
    on the validation split after the last epoch.

    The run is `python -m classification fit --config work_dir/standalone.yaml` in a child
    process (this interpreter, this process's torch thread count); the Trainer's root folder is
    `work_dir`, which receives the CLI's config.yaml, the CSV log (metrics.csv, where the top-1 is
    read) and the run's output (train.log). Arguments as `standalone_config`'s.

    Raises:
        RuntimeError: the run failed (its exit status and last output lines) or logged no val/top1.
    """
    import yaml

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "standalone.yaml"
    csv_logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                  "init_args": {"save_dir": str(work_dir), "name": "", "version": ""}}
    overrides = {"trainer.default_root_dir": str(work_dir), "trainer.logger": csv_logger, **(overrides or {})}
    path.write_text(yaml.safe_dump(standalone_config(config, data_root, img_size, epochs, base_config, overrides),
                                   sort_keys=False))
    # the child imports this very package (a source checkout or an installed one alike)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    log_path = work_dir / "train.log"
    with log_path.open("w") as log:
        run = subprocess.run([sys.executable, "-m", "classification", "fit", "--config", str(path)],
                             stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if run.returncode != 0:
        tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
        raise RuntimeError(f"stand-alone training of {arch_dict(config)} failed with exit status {run.returncode} "
                           f"(output in {log_path}): {tail}")
    top1 = _last_logged(work_dir / "metrics.csv", "val/top1")
    if top1 is None:
        raise RuntimeError(f"stand-alone training of {arch_dict(config)} logged no val/top1 (output in {log_path})")
    return round(100.0 * top1, 4)   # torchmetrics' float32 fraction, as a percentage


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


def run_proxy_check(checkpoint: str | Path, data_root: str | Path, out: str | Path, base_config: BaseConfig,
                    count: int = 10, epochs: int = 8, seed: int = 0, calib_batches: int = 4, batch_size: int = 100,
                    overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The Fig. 5 check of a trained supernet checkpoint on an ImageNet-layout folder.

    `count` sub-networks (`spread_configs`): inherited top-1 on the val split (BatchNorm
    recalibrated on `calib_batches` train batches) against top-1 after `epochs` epochs of
    stand-alone training (`train_standalone` with `base_config` and `overrides`). Writes
    `out/proxy.json` and `out/proxy.png` and returns the JSON's content.

    Args:
        checkpoint: SupernetModule Lightning checkpoint.
        data_root: ImageNet-layout folder (train/ and val/).
        out: output folder; stand-alone runs in out/standalone<i>/.
        base_config: classification config (path or dict) the stand-alone runs start from,
            e.g. configs/classification/toy.yaml of the source tree.
        count, epochs, seed: sub-networks (>= 3), stand-alone epochs, seed of the draw.
        calib_batches, batch_size: BatchNorm recalibration batches and evaluation batch size.
        overrides: dotted keys of the stand-alone config set last.
        log: receives progress lines.
    """
    t0 = time.perf_counter()
    read_config(base_config)   # a missing or unreadable base config fails now, not after the inherited pass
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    supernet = load_supernet(checkpoint)
    batches = dict(img_size=supernet.img_size, batch_size=batch_size)
    # BatchNorm recalibration reads only the images it uses, evenly spaced over the classes
    calib = image_batches(data_root, "train", max_images=calib_batches * batch_size, **batches)
    evaluator = SubnetEvaluator(supernet, None, image_batches(data_root, "val", **batches), calib, calib_batches)
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
              "base_config": base_config if isinstance(base_config, Mapping) else str(base_config),
              "overrides": dict(overrides or {}), **report.to_dict(),
              "params": params, "archs": [arch_dict(c) for c in configs], "train_seconds": seconds,
              "seconds": time.perf_counter() - t0}
    (out / "proxy.json").write_text(json.dumps(result, indent=1))
    plot_proxy(report, params, out / "proxy.png")
    log(f"proxy: {report.summary()} in {result['seconds']:.0f} s")
    return result
