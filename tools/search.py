"""Joint size/latency search on a trained supernet (paper Alg. 1): greedy MES search and its
random baseline.

    python tools/search.py --checkpoint runs/search_toy/checkpoints/last.ckpt --data data/toy_cls \
        --lut artifacts/search_toy/lut.json [--config configs/search/search_toy.yaml] \
        [--target-params N | --target-latency MS | --target-mes X | --target-mes-factor F] --out DIR

Writes DIR/search.json (every step: action, params, latency, MES, top-1), DIR/searched.yaml (train
the result from scratch: python -m classification fit --config DIR/searched.yaml --data.root ...),
DIR/random.json (random sub-networks at the same budget) and DIR/trajectory.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def search(checkpoint: Path, data: Path, lut: Path, config: Path, out: Path, target: dict | None = None) -> dict:
    """Load the supernet and the table, run the search with the settings of `config` (its target
    replaced by `target` when given) and write the outputs to `out`."""
    import torch
    import yaml

    from classification.search import load_supernet, run_search
    from deploy.latency_lut import LatencyTable

    torch.manual_seed(0)
    settings = yaml.safe_load(config.read_text())
    if target:
        settings["search"]["target"] = target
    return run_search(load_supernet(checkpoint), data, LatencyTable.load(lut), settings, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="SupernetModule Lightning checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="ImageNet-layout data root")
    parser.add_argument("--lut", type=Path, required=True, help="latency table (tools/build_latency_lut.py)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/search/search_toy.yaml")
    parser.add_argument("--out", type=Path, default=Path("artifacts/search"))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target-params", type=float)
    group.add_argument("--target-latency", type=float, help="ms, by the table")
    group.add_argument("--target-mes", type=float)
    group.add_argument("--target-mes-factor", type=float, help="x the largest sub-network's MES")
    args = parser.parse_args()
    target = {k: v for k, v in (("params", args.target_params), ("latency_ms", args.target_latency),
                                ("mes", args.target_mes), ("mes_factor", args.target_mes_factor)) if v is not None}
    out = search(args.checkpoint, args.data, args.lut, args.config, args.out, target or None)
    final = out["result"].final
    print(f"search: searched architecture in {args.out / 'searched.yaml'}: params {final.params}, "
          f"latency {final.latency_ms:.3f} ms, MES {final.mes:.2f}, top-1 {final.top1:.2f}")


if __name__ == "__main__":
    main()
