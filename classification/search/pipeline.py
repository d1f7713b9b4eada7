"""The search tool's job end to end: greedy search, random baseline, and their files."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

from backbones.errors import UsageError
from backbones.supernet import EfficientFormerV2Supernet
from deploy.latency_lut import LatencyTable

from .evaluator import SubnetEvaluator
from .greedy import greedy_search
from .io import SearchedNetwork, classification_config, image_batches
from .objective import Target
from .plots import plot_trajectory
from .random_search import random_baseline, random_cloud
from .settings import SearchSettings

__all__ = ["run_search"]


def run_search(supernet: EfficientFormerV2Supernet, data_root: str | Path, table: LatencyTable,
               settings: SearchSettings | Mapping[str, Any], out: str | Path,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Greedy search to the target, the random baseline at the same budget, and their outputs in
    `out`: search.json (settings, every step, and under "network" the searched network as counted:
    `SearchedNetwork`, read back by `load_searched`), searched.yaml (a classification config
    training the result from scratch at the supernet's image size, its runs in `out/train`),
    random.json and trajectory.png.

    Args:
        supernet: the trained supernet.
        data_root: ImageNet-layout folder (the `search.split` and `search.calib_split` splits).
        table: latency table of the supernet's space, at its image size.
        settings: `SearchSettings`, or a config's dict (checked as strictly as a file).
        out: output folder (created).
        log: receives progress lines.

    Returns:
        result (`SearchResult`), randoms (records at the budget), evaluator, target.
    """
    if not isinstance(settings, SearchSettings):
        settings = SearchSettings.from_dict(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if table.img_size != supernet.img_size:
        raise UsageError(f"the latency table was built at {table.img_size}px, the supernet at {supernet.img_size}px")
    s, r = settings.search, settings.random
    batches = dict(img_size=supernet.img_size, batch_size=s.batch_size, cache=s.cache)
    val = image_batches(data_root, s.split, max_images=s.max_images, **batches)
    # BatchNorm recalibration reads only the images it uses, evenly spaced over the classes
    calib = image_batches(data_root, s.calib_split, max_images=s.calib_batches * s.batch_size, **batches)
    evaluator = SubnetEvaluator(supernet, table, val, calib, s.calib_batches, settings.mes)
    target = s.target.resolve(evaluator)
    log(f"search: target {target}, expansions {s.expansions}")
    result = greedy_search(evaluator, target, max_steps=s.max_steps, expansions=s.expansions, log=lambda st: log(
        f"  step {st.step:3d} {st.action:40s} params {st.params / 1e6:7.3f}M latency {st.latency_ms:8.3f} ms "
        f"MES {st.mes:9.2f} top-1 {st.top1:6.2f} ({st.candidates} candidates, {st.seconds:.0f} s)"))
    log(f"search: {result.reason}; {len(result.steps) - 1} steps, {result.evaluations} evaluations")
    network = SearchedNetwork.of_subnet(result.config, supernet, params=result.final.params)
    (out / "search.json").write_text(json.dumps({"target": asdict(target), "settings": settings.to_dict(),
                                                 "network": network.to_dict(), **result.to_dict()}, indent=1))
    import yaml

    (out / "searched.yaml").write_text(yaml.safe_dump(classification_config(result, settings.base_config,
                                                                            run_dir=out / "train",
                                                                            img_size=supernet.img_size),
                                                     sort_keys=False))
    budget = Target(mes=result.final.mes) if target.mes is not None else target
    randoms = random_baseline(evaluator, budget, r.count, r.seed, r.tolerance, s.expansions)
    cloud = random_cloud(evaluator, r.cloud, r.seed + 1, s.expansions) if r.cloud else []
    (out / "random.json").write_text(json.dumps({"budget": asdict(budget), "at_budget": randoms, "cloud": cloud},
                                                indent=1))
    plot_trajectory(result, randoms + cloud, out / "trajectory.png")
    mean_random = statistics.fmean(x["top1"] for x in randoms)
    log(f"search: searched top-1 {result.final.top1:.2f} at MES {result.final.mes:.2f}; random at the same "
        f"budget {mean_random:.2f} (mean of {len(randoms)}), best {max(x['top1'] for x in randoms):.2f}")
    return {"result": result, "randoms": randoms, "evaluator": evaluator, "target": target}
