"""Joint size/speed search on a trained supernet (paper Sec. 4.2.3, Alg. 1), its random
baseline, BatchNorm recalibration and the supernet-as-proxy check (paper Fig. 5).

Greedy search: from the largest sub-network, every step evaluates each frontier action (drop one
block, drop the first MHSA of a stage, shrink one stage's or the stem's width one step, shrink one
FFN's expansion one step) with inherited weights after BatchNorm recalibration, and takes the
action with the smallest accuracy drop per MES gained, until a target parameter count, latency
or MES is reached. An action that does not lower accuracy costs nothing; ties go to the smaller
loss increase per MES gained, then to the larger MES gain.
"""
from __future__ import annotations

import math
import pickle
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from backbones.supernet import (ATTENTION_STAGES, EfficientFormerV2Supernet, SearchSpace, StageConfig,
                                SubnetConfig)
from deploy.latency_lut import LatencyTable, subnet_keys, table_entries
from deploy.mes import ALPHA_LATENCY, ALPHA_SIZE, U_LATENCY_MS, U_SIZE, mobile_efficiency_score

__all__ = ["Action", "frontier", "recalibrate_bn", "evaluate", "Target", "MesSpec", "SubnetEvaluator",
           "SearchStep", "SearchResult", "arch_dict", "greedy_search", "random_baseline", "random_cloud",
           "sample_at_budget", "plot_trajectory", "ProxyReport", "proxy_correlation", "load_supernet",
           "image_batches", "classification_config"]

Batches = Iterable[Any]


# --------------------------------------------------------------------------------------------
# BatchNorm recalibration and evaluation
# --------------------------------------------------------------------------------------------
def _images_targets(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, num_batches: int = 10) -> int:
    """Re-estimate the running statistics of the BatchNorms `model` uses (its current
    sub-network) from up to `num_batches` batches, as a cumulative average; other BatchNorms are
    left alone. The model is left in eval mode. Returns the number of batches used."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    used: list[_BatchNorm] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _: used.append(mod))
             for m in model.modules() if isinstance(m, _BatchNorm)]
    device = next(model.parameters()).device
    n, momenta = 0, {}
    try:
        for batch in batches:
            if batch is None:
                continue
            x, _ = _images_targets(batch)
            x = x.to(device)
            if n == 0:  # find the BatchNorms of this sub-network, then reset only those
                model.eval()
                model(x[:1])
                for h in hooks:
                    h.remove()
                hooks = []
                for bn in set(used):
                    bn.reset_running_stats()
                    momenta[bn] = bn.momentum
                    bn.momentum = None  # cumulative moving average
                model.train()
            model(x)
            n += 1
            if n >= num_batches:
                break
    finally:
        for h in hooks:
            h.remove()
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.eval()
    if n == 0:
        raise ValueError("no batch to recalibrate BatchNorm statistics with")
    return n


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, max_batches: int | None = None) -> tuple[float, float]:
    """(top-1 accuracy in percent, mean cross-entropy) of `model` in eval mode on `batches`."""
    model.eval()
    device = next(model.parameters()).device
    correct, total, loss = 0, 0, 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if batch is None:
            continue
        x, y = _images_targets(batch)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    if total == 0:
        raise ValueError("no labelled batch to evaluate on")
    return 100.0 * correct / total, loss / total


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """One slimming step. kind: drop_block (stage, block = supernet index), drop_mhsa (stage:
    its first MHSA goes), shrink_width (stage), shrink_stem, shrink_expansion (stage, block)."""

    kind: str
    stage: int = -1
    block: int = -1

    def __str__(self) -> str:
        if self.kind == "shrink_stem":
            return "shrink stem width"
        where = f"stage {self.stage + 1}"
        if self.kind in ("drop_block", "shrink_expansion"):
            where += f" block {self.block}"
        return f"{self.kind.replace('_', ' ')} ({where})"


def _smaller(choices: Sequence, value) -> Any | None:
    i = list(choices).index(value)
    return choices[i - 1] if i > 0 else None


def _replace_stage(config: SubnetConfig, j: int, stage: StageConfig) -> SubnetConfig:
    stages = list(config.stages)
    stages[j] = stage
    return replace(config, stages=tuple(stages))


def frontier(config: SubnetConfig, space: SearchSpace) -> list[tuple[Action, SubnetConfig]]:
    """Every legal one-step slimming of `config` with its result. No action empties a stage
    (each keeps one block), goes below the smallest width or expansion of the space, or leaves an
    MHSA before an FFN-only block (the kept MHSAs stay the trailing ones)."""
    out = []
    smaller_stem = _smaller(space.stem_widths, config.stem_width)
    if smaller_stem is not None:
        out.append((Action("shrink_stem"), replace(config, stem_width=smaller_stem)))
    for j, s in enumerate(config.stages):
        first_mhsa = s.depth - s.attention
        if s.depth > 1:
            for k, b in enumerate(s.blocks):
                att = s.attention - (1 if k >= first_mhsa else 0)
                new = StageConfig(s.width, s.blocks[:k] + s.blocks[k + 1:], s.expansions[:k] + s.expansions[k + 1:], att)
                out.append((Action("drop_block", j, b), _replace_stage(config, j, new)))
        if s.attention > 0 and j in ATTENTION_STAGES:
            out.append((Action("drop_mhsa", j), _replace_stage(config, j, replace(s, attention=s.attention - 1))))
        narrower = _smaller(space.widths[j], s.width)
        if narrower is not None:
            out.append((Action("shrink_width", j), _replace_stage(config, j, replace(s, width=narrower))))
        for k, (b, e) in enumerate(zip(s.blocks, s.expansions)):
            smaller = _smaller(space.expansions, e)
            if smaller is not None:
                exps = s.expansions[:k] + (smaller,) + s.expansions[k + 1:]
                out.append((Action("shrink_expansion", j, b), _replace_stage(config, j, replace(s, expansions=exps))))
    return out


# --------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MesSpec:
    """Units and exponents of the Mobile Efficiency Score (paper eq. 7; defaults: the paper's)."""

    u_size: float = U_SIZE
    u_latency: float = U_LATENCY_MS
    alpha_size: float = ALPHA_SIZE
    alpha_latency: float = ALPHA_LATENCY

    def __call__(self, params: float, latency_ms: float) -> float:
        return mobile_efficiency_score(params, latency_ms, self.u_size, self.u_latency, self.alpha_size,
                                       self.alpha_latency)


@dataclass(frozen=True)
class Target:
    """Where the search stops: every given bound met (parameters <=, latency <=, MES >=)."""

    params: float | None = None
    latency_ms: float | None = None
    mes: float | None = None

    def __post_init__(self) -> None:
        if self.params is None and self.latency_ms is None and self.mes is None:
            raise ValueError("give a target: a parameter count, a latency (ms) or an MES")

    def reached(self, params: float, latency_ms: float, mes: float) -> bool:
        return ((self.params is None or params <= self.params)
                and (self.latency_ms is None or latency_ms <= self.latency_ms)
                and (self.mes is None or mes >= self.mes))


class SubnetEvaluator:
    """Metrics of sub-networks of a supernet: size and latency (table) are computed, accuracy is
    measured with inherited weights after BatchNorm recalibration on `calib` batches. Without a
    latency table, sizes and accuracies are available but not `cost`."""

    def __init__(self, supernet: EfficientFormerV2Supernet, table: LatencyTable | None, val: Batches, calib: Batches,
                 calib_batches: int = 10, mes: MesSpec = MesSpec(), val_batches: int | None = None) -> None:
        self.supernet = supernet
        self.table = table
        self.val = val
        self.calib = calib
        self.calib_batches = calib_batches
        self.val_batches = val_batches
        self.mes_spec = mes
        self.evaluations = 0
        net = supernet
        self._modules = {key: factory for key, factory, _ in table_entries(net.space, net.img_size,
                                                                             net.num_classes, net.distillation)}
        self._module_params: dict[str, int] = {}

    def count_params(self, config: SubnetConfig) -> int:
        """Parameters of the plain model of `config`: the sum over its modules (the table's
        entries), each counted once on the meta device and cached."""
        total = 0
        for key in subnet_keys(config):
            if key not in self._module_params:
                with torch.device("meta"):
                    self._module_params[key] = sum(p.numel() for p in self._modules[key]().parameters())
            total += self._module_params[key]
        return total

    def cost(self, config: SubnetConfig) -> tuple[int, float, float]:
        """(parameters, predicted latency in ms, MES)."""
        if self.table is None:
            raise ValueError("latency and MES need a latency table (tools/build_latency_lut.py)")
        params = self.count_params(config)
        latency = self.table.predict(config)
        return params, latency, self.mes_spec(params, latency)

    def accuracy(self, config: SubnetConfig) -> tuple[float, float]:
        """(top-1 %, loss) of `config` with inherited weights, BatchNorm recalibrated."""
        self.supernet.set_subnet(config)
        recalibrate_bn(self.supernet, self.calib, self.calib_batches)
        self.evaluations += 1
        return evaluate(self.supernet, self.val, self.val_batches)

    def record(self, config: SubnetConfig) -> dict[str, Any]:
        params, latency, mes = self.cost(config)
        acc, loss = self.accuracy(config)
        return {"params": params, "latency_ms": latency, "mes": mes, "top1": acc, "loss": loss,
                "config": config.to_dict()}


# --------------------------------------------------------------------------------------------
# Greedy search
# --------------------------------------------------------------------------------------------
@dataclass
class SearchStep:
    step: int
    action: str
    params: int
    latency_ms: float
    mes: float
    top1: float
    loss: float
    candidates: int
    seconds: float
    config: dict[str, Any]


@dataclass
class SearchResult:
    config: SubnetConfig
    steps: list[SearchStep]
    reached: bool
    reason: str
    evaluations: int
    seconds: float

    @property
    def final(self) -> SearchStep:
        return self.steps[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "arch": arch_dict(self.config), "reached": self.reached,
                "reason": self.reason, "evaluations": self.evaluations, "seconds": self.seconds,
                "steps": [asdict(s) for s in self.steps]}


def arch_dict(config: SubnetConfig) -> dict[str, Any]:
    """The plain architecture as `Arch.from_dict` (and `model.arch` of the classification CLI) reads it."""
    arch = config.to_arch()
    return {"widths": arch.widths, "depths": arch.depths, "expansions": [list(s.expansions) for s in arch.stages],
            "attention": [s.attention for s in arch.stages], "stem_width": arch.stem_width}


def greedy_search(evaluator: SubnetEvaluator, target: Target, start: SubnetConfig | None = None,
                  max_steps: int = 1000, log: Callable[[SearchStep], None] | None = None) -> SearchResult:
    """Algorithm 1's search: slim `start` (default: the largest sub-network) one frontier action
    at a time, argmin over actions of (accuracy drop / MES gain), until `target` is reached."""
    t0 = time.perf_counter()
    space = evaluator.supernet.space
    config = start or space.largest()
    space.validate(config)
    params, latency, mes = evaluator.cost(config)
    acc, loss = evaluator.accuracy(config)
    steps = [SearchStep(0, "start", params, latency, mes, acc, loss, 0, time.perf_counter() - t0,
                        config.to_dict())]
    if log:
        log(steps[-1])
    reason = "target reached"
    while not target.reached(params, latency, mes):
        if len(steps) > max_steps:
            reason = f"stopped after {max_steps} steps"
            break
        best = None
        candidates = 0
        for action, new in frontier(config, space):
            p, lat, m = evaluator.cost(new)
            gain = m - mes
            if gain <= 0:
                continue
            candidates += 1
            a, lo = evaluator.accuracy(new)
            # a loss that falls costs nothing, like an accuracy that does not drop: among free
            # actions the largest MES gain wins (otherwise the tiniest steps would, by dividing ~0)
            key = (max(acc - a, 0.0) / gain, max(lo - loss, 0.0) / gain, -gain)
            if best is None or key < best[0]:
                best = (key, action, new, p, lat, m, a, lo)
        if best is None:
            reason = "no action raises the MES any further"
            break
        _, action, config, params, latency, mes, acc, loss = best
        steps.append(SearchStep(len(steps), str(action), params, latency, mes, acc, loss, candidates,
                                time.perf_counter() - t0, config.to_dict()))
        if log:
            log(steps[-1])
    return SearchResult(config, steps, target.reached(params, latency, mes), reason, evaluator.evaluations,
                        time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Random baseline
# --------------------------------------------------------------------------------------------
def sample_at_budget(evaluator: SubnetEvaluator, target: Target, count: int, rng: random.Random,
                     tolerance: float = 0.1, max_draws: int = 20000) -> list[SubnetConfig]:
    """`count` distinct uniformly drawn sub-networks that meet `target` and lie near it: each
    given bound met with at most `tolerance` (relative) to spare, so they have the same budget."""
    space = evaluator.supernet.space
    found: list[SubnetConfig] = []
    for _ in range(max_draws):
        config = space.sample(rng)
        if config in found:
            continue
        params, latency, mes = evaluator.cost(config)
        if not target.reached(params, latency, mes):
            continue
        near = ((target.params is None or params >= target.params * (1 - tolerance))
                and (target.latency_ms is None or latency >= target.latency_ms * (1 - tolerance))
                and (target.mes is None or mes <= target.mes * (1 + tolerance)))
        if near:
            found.append(config)
            if len(found) == count:
                break
    if not found:
        raise ValueError(f"no random sub-network within {tolerance:.0%} of the target {target} in "
                         f"{max_draws} draws: loosen the tolerance or the target")
    return found


def random_baseline(evaluator: SubnetEvaluator, target: Target, count: int = 10, seed: int = 0,
                    tolerance: float = 0.1) -> list[dict[str, Any]]:
    """Random search under the same budget (paper Table 4): records (params, latency, MES,
    top-1 with inherited weights, config) of random sub-networks at the target."""
    configs = sample_at_budget(evaluator, target, count, random.Random(seed), tolerance)
    return [evaluator.record(c) for c in configs]


def random_cloud(evaluator: SubnetEvaluator, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Records of uniformly drawn sub-networks (the blue dots of the paper's Fig. 3)."""
    rng = random.Random(seed)
    return [evaluator.record(evaluator.supernet.space.sample(rng)) for _ in range(count)]


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
def plot_trajectory(result: SearchResult, randoms: Sequence[dict[str, Any]], path: str | Path,
                    title: str = "supernet search") -> Path:
    """PNG of the search trajectory (MES vs top-1, log MES axis as in the paper's Fig. 3) beside
    random sub-networks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if randoms:
        ax.scatter([r["mes"] for r in randoms], [r["top1"] for r in randoms], c="tab:blue", s=18,
                   label="random sub-networks", alpha=0.7)
    ax.plot([s.mes for s in result.steps], [s.top1 for s in result.steps], "-o", c="tab:red", ms=3,
            label="greedy search")
    ax.scatter([result.final.mes], [result.final.top1], marker="*", s=160, c="tab:red", zorder=5,
               label="searched")
    ax.set_xscale("log")
    ax.set_xlabel("MES (log scale)")
    ax.set_ylabel("top-1 (%), inherited weights")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Supernet as a proxy (paper Fig. 5)
# --------------------------------------------------------------------------------------------
@dataclass
class ProxyReport:
    """Top-1 (%) with inherited weights and after stand-alone training, per sub-network, and how
    well the first predicts the second: Pearson r (signed), r^2 and Kendall tau (rank agreement)."""

    inherited: list[float]
    standalone: list[float]
    pearson_r: float
    kendall_tau: float
    configs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pearson_r2(self) -> float:
        return self.pearson_r ** 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pearson_r2": self.pearson_r2}

    def summary(self) -> str:
        return (f"supernet as proxy on {len(self.inherited)} sub-networks: Pearson r {self.pearson_r:.3f} "
                f"(r^2 {self.pearson_r2:.3f}), Kendall tau {self.kendall_tau:.3f}")


def proxy_correlation(evaluator: SubnetEvaluator, configs: Sequence[SubnetConfig],
                      train_standalone: Callable[[SubnetConfig], float]) -> ProxyReport:
    """Accuracy with inherited weights (after BatchNorm recalibration) against accuracy after
    stand-alone training (`train_standalone(config) -> top-1 %`) for `configs`."""
    from scipy.stats import kendalltau

    if len(configs) < 3:
        raise ValueError("the proxy check needs at least 3 sub-networks")
    inherited = [evaluator.accuracy(c)[0] for c in configs]
    standalone = [float(train_standalone(c)) for c in configs]
    r = _pearson(inherited, standalone)
    tau = kendalltau(inherited, standalone).statistic
    return ProxyReport(inherited, standalone, r, float(tau) if not math.isnan(tau) else 0.0,
                       [c.to_dict() for c in configs])


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:  # a constant series
        return 0.0


# --------------------------------------------------------------------------------------------
# Loading and data for the search tool
# --------------------------------------------------------------------------------------------
def load_supernet(checkpoint: str | Path) -> EfficientFormerV2Supernet:
    """The supernet of a `SupernetModule` Lightning checkpoint (read with weights_only=True)."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"supernet checkpoint {checkpoint} does not exist (python -m classification.supernet "
                                "fit ... writes checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        # torch.load fails on a file that is not a torch checkpoint with any of these
        raise ValueError(f"cannot read supernet checkpoint {checkpoint} (not a torch checkpoint, or one that "
                         f"carries code): {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint of classification.supernet.SupernetModule "
                         "(python -m classification.supernet fit ... writes one)")
    hp = ckpt["hyper_parameters"]
    state = {k[len("supernet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    if not state:
        raise ValueError(f"{checkpoint} holds no supernet weights (no 'supernet.*' keys)")
    net = EfficientFormerV2Supernet(hp.get("space"), num_classes=hp["num_classes"],
                                    distillation=hp.get("distillation", True), img_size=hp["img_size"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not fit the supernet its hyper-parameters describe: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()


def image_batches(root: str | Path, split: str, img_size: int, batch_size: int, max_images: int | None = None,
                  cache: bool = True, num_workers: int = 0, **data_kwargs: Any) -> Batches:
    """Evaluation-transformed batches of one split of an ImageNet-layout folder (the classification
    DataModule's transforms and reader). `max_images` takes evenly spaced images (every class
    keeps its share); `cache` holds the batches in memory (small splits: evaluated many times)."""
    from torch.utils.data import DataLoader, Subset

    from .data import ImageFolderDataset, ImageNetDataModule, collate_skip_bad, scan_split

    dm = ImageNetDataModule(root, img_size=img_size, batch_size=batch_size, num_workers=num_workers, **data_kwargs)
    dataset = ImageFolderDataset(scan_split(Path(root) / split, dm.class_to_idx), dm.eval_transform(), dm.classes)
    if max_images is not None and max_images < len(dataset):
        step = len(dataset) / max_images
        dataset = Subset(dataset, [int(i * step) for i in range(max_images)])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_bad)
    return [b for b in loader if b is not None] if cache else loader


def classification_config(result: SearchResult | SubnetConfig, base_config: str | Path | None = None,
                          run_dir: str | Path | None = None) -> dict[str, Any]:
    """A `python -m classification fit` config that trains a sub-network (the searched one of a
    `SearchResult`) from scratch: `base_config` (a classification YAML) with `model.arch` set to
    its architecture (replacing `model.model_name`). `run_dir`: where its logs and checkpoints go
    (not into the base config's run folder, whose checkpoints they would overwrite)."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(Path(base_config).read_text()) if base_config else {}
    model = config.setdefault("model", {}) or {}
    config["model"] = model
    subnet = result.config if isinstance(result, SearchResult) else result
    model.pop("model_name", None)
    model["arch"] = arch_dict(subnet)
    if run_dir is not None:
        run_dir = str(run_dir)
        trainer = config.setdefault("trainer", {}) or {}
        config["trainer"] = trainer
        trainer["default_root_dir"] = run_dir
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
                logger["init_args"]["save_dir"] = run_dir
        config["checkpoint"] = {**(config.get("checkpoint") or {}), "dirpath": f"{run_dir}/checkpoints"}
    return config


def target_from_spec(spec: dict[str, Any], evaluator: SubnetEvaluator) -> Target:
    """A Target from a config dict: params / latency_ms / mes, or mes_factor (x the largest
    sub-network's MES)."""
    unknown = set(spec) - {"params", "latency_ms", "mes", "mes_factor"}
    if unknown:
        raise ValueError(f"unknown target keys {sorted(unknown)}: use params, latency_ms, mes or mes_factor")
    mes = spec.get("mes")
    if spec.get("mes_factor") is not None:
        mes = evaluator.cost(evaluator.supernet.space.largest())[2] * float(spec["mes_factor"])
    return Target(spec.get("params"), spec.get("latency_ms"), mes)


def run_search(supernet: EfficientFormerV2Supernet, data_root: str | Path, table: LatencyTable,
               settings: dict[str, Any], out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The search tool's job: greedy search to the target, the random baseline at the same
    budget, and their outputs in `out`: search.json (every step), searched.yaml (a
    classification config training the result from scratch), random.json, trajectory.png."""
    import json

    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if table.img_size != supernet.img_size:
        raise ValueError(f"the latency table was built at {table.img_size}px, the supernet at {supernet.img_size}px")
    s, r = settings["search"], settings.get("random", {})
    batches = dict(img_size=supernet.img_size, batch_size=s.get("batch_size", 100), cache=s.get("cache", True))
    val = image_batches(data_root, s.get("split", "val"), max_images=s.get("max_images"), **batches)
    calib = image_batches(data_root, s.get("calib_split", "train"), **batches)
    evaluator = SubnetEvaluator(supernet, table, val, calib, s.get("calib_batches", 10),
                                MesSpec(**settings.get("mes", {})))
    target = target_from_spec(s["target"], evaluator)
    log(f"search: target {target}")
    result = greedy_search(evaluator, target, log=lambda st: log(
        f"  step {st.step:3d} {st.action:40s} params {st.params / 1e6:7.3f}M latency {st.latency_ms:8.3f} ms "
        f"MES {st.mes:9.2f} top-1 {st.top1:6.2f} ({st.candidates} candidates, {st.seconds:.0f} s)"))
    log(f"search: {result.reason} after {len(result.steps) - 1} steps, {result.evaluations} evaluations")
    (out / "search.json").write_text(json.dumps({"target": asdict(target), **result.to_dict()}, indent=1))
    (out / "searched.yaml").write_text(yaml.safe_dump(classification_config(result, settings.get("base_config"),
                                                                            run_dir=out / "train"),
                                                     sort_keys=False))
    budget = Target(mes=result.final.mes) if target.mes is not None else target
    randoms = random_baseline(evaluator, budget, r.get("count", 10), r.get("seed", 0), r.get("tolerance", 0.1))
    cloud = random_cloud(evaluator, r.get("cloud", 0), r.get("seed", 0) + 1) if r.get("cloud", 0) else []
    (out / "random.json").write_text(json.dumps({"budget": asdict(budget), "at_budget": randoms, "cloud": cloud},
                                                indent=1))
    plot_trajectory(result, randoms + cloud, out / "trajectory.png")
    mean_random = statistics.fmean(x["top1"] for x in randoms)
    log(f"search: searched top-1 {result.final.top1:.2f} at MES {result.final.mes:.2f}; random at the same "
        f"budget {mean_random:.2f} (mean of {len(randoms)}), best {max(x['top1'] for x in randoms):.2f}")
    return {"result": result, "randoms": randoms, "evaluator": evaluator, "target": target}
