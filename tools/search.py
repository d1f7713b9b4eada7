"""Joint size/latency search on a trained supernet (paper Alg. 1): greedy MES search and its
random baseline.

    python tools/search.py --checkpoint runs/search_toy/checkpoints/last.ckpt --data data/toy_cls \
        --lut artifacts/search_toy/lut.json [--config configs/search/search_toy.yaml] \
        [--target-params N | --target-latency MS | --target-mes X | --target-mes-factor F] \
        [--expansions joint|fixed] [--max-steps N] [--max-images N] [--calib-batches N]
        [--batch-size N] [--random-count N] --out DIR

Writes DIR/search.json (settings and every step: action, params, latency, MES, top-1),
DIR/searched.yaml (train the result from scratch: python -m classification fit --config
DIR/searched.yaml --data.root ...), DIR/random.json (random sub-networks at the same budget) and
DIR/trajectory.png. The config is read strictly (docs/search.md): an unknown key is an error.
The size flags replace the config's keys for a short run: --max-steps (search.max_steps),
--max-images (search.max_images), --calib-batches (search.calib_batches), --batch-size
(search.batch_size), --random-count (random.count). Every tool reads the searched network from
DIR/search.json or DIR/searched.yaml (`classification.search.load_searched`), e.g.
`python tools/model_profile.py --arch DIR/search.json` counts what the search reported.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, positive_int, run
from _demo import add_threads_option, apply_threads

ROOT = Path(__file__).resolve().parents[1]


def search(checkpoint: Path, data: Path, lut: Path, config: Path, out: Path, target: dict | None = None,
           expansions: str | None = None, search_keys: dict | None = None, random_keys: dict | None = None) -> dict:
    """Run the search with the settings of `config` and write its outputs to `out`.

    Args:
        checkpoint: SupernetModule Lightning checkpoint.
        data: ImageNet-layout data root.
        lut: latency table of the supernet's space (tools/build_latency_lut.py).
        config: search config (configs/search/search_*.yaml).
        out: output folder.
        target: replaces the config's `search.target` (params / latency_ms / mes / mes_factor).
        expansions: replaces the config's `search.expansions` (joint or fixed).
        search_keys, random_keys: replace keys of the config's `search` and `random` sections.
    """
    from dataclasses import replace

    import torch

    from classification.search import TargetSettings, load_settings, load_supernet, run_search
    from deploy.latency_lut import LatencyTable

    torch.manual_seed(0)
    settings = load_settings(config)
    if target:
        settings = replace(settings, search=replace(settings.search, target=TargetSettings(**target)))
    if expansions:
        settings = replace(settings, search=replace(settings.search, expansions=expansions))
    if search_keys:
        settings = replace(settings, search=replace(settings.search, **search_keys))
    if random_keys:
        settings = replace(settings, random=replace(settings.random, **random_keys))
    if not data.is_dir():
        raise UsageError(f"--data {data}: no such folder (give an ImageNet-layout root with train/ and val/)")
    if not lut.is_file():
        raise UsageError(f"--lut {lut}: no such file (tools/build_latency_lut.py writes one)")
    table = LatencyTable.load(lut)
    return run_search(load_supernet(checkpoint), data, table, settings, out)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="search", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="SupernetModule Lightning checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="ImageNet-layout data root")
    parser.add_argument("--lut", type=Path, required=True, help="latency table (tools/build_latency_lut.py)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/search/search_toy.yaml")
    parser.add_argument("--out", type=Path, default=Path("artifacts/search"))
    parser.add_argument("--expansions", choices=("joint", "fixed"),
                        help="replace search.expansions: joint (the paper's) or fixed (depth and width only)")
    size = parser.add_argument_group("a shorter run (each replaces the config's key)")
    size.add_argument("--max-steps", type=positive_int, help="search.max_steps: stop after this many actions")
    size.add_argument("--max-images", type=positive_int, help="search.max_images: images of the held-out split")
    size.add_argument("--calib-batches", type=positive_int, help="search.calib_batches: BatchNorm recalibration batches")
    size.add_argument("--batch-size", type=positive_int, help="search.batch_size")
    size.add_argument("--random-count", type=positive_int, help="random.count: random sub-networks at the budget")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target-params", type=float)
    group.add_argument("--target-latency", type=float, help="ms, by the table")
    group.add_argument("--target-mes", type=float)
    group.add_argument("--target-mes-factor", type=float, help="x the largest sub-network's MES")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads, workers=0)  # the held-out images are read in this process
    target = {k: v for k, v in (("params", args.target_params), ("latency_ms", args.target_latency),
                                ("mes", args.target_mes), ("mes_factor", args.target_mes_factor)) if v is not None}
    search_keys = {k: v for k, v in (("max_steps", args.max_steps), ("max_images", args.max_images),
                                     ("calib_batches", args.calib_batches), ("batch_size", args.batch_size))
                   if v is not None}
    random_keys = {"count": args.random_count} if args.random_count is not None else {}
    out = search(args.checkpoint, args.data, args.lut, args.config, args.out, target or None, args.expansions,
                 search_keys, random_keys)
    final = out["result"].final
    print(f"search: searched network in {args.out / 'search.json'} and {args.out / 'searched.yaml'}: params "
          f"{final.params:,}, latency {final.latency_ms:.3f} ms, MES {final.mes:.2f}, top-1 {final.top1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "search"))
