"""Parameters (all, and in the fused deploy form) and GMACs of a model at a resolution.

    python tools/model_profile.py --model efficientformerv2_s0 [--resolution 224] [--num-classes 1000]
    python tools/model_profile.py --arch artifacts/search/search.json      # a searched network
    python tools/model_profile.py --arch '{"base": "s0", "attention": [0, 0, 2, 2]}'

--arch takes what the search writes (search.json, or searched.yaml with the search.json beside
it), a JSON file holding an architecture dict, or the dict inline; the network is built as the
search built it (`classification.search.load_searched`: its image size, which sizes the attention
biases, its classes and distillation head), so the count is the one the search reported. Options
given explicitly (--resolution, --num-classes, --distillation/--no-distillation) replace the
recorded values; a bare architecture is built at 224 with 1000 classes and a distillation head.
The deploy form is `model.fuse()` (BatchNorm folded, heads merged), what is exported.

GMACs are counted with torch.utils.flop_counter (convolutions, linear layers and attention
matmuls), halved to multiply-accumulates.
"""
from __future__ import annotations

import argparse
import sys


def profile(model, resolution: tuple[int, int]) -> dict:
    """Parameter counts (trainable form and deploy form) and GMACs per image of an EfficientFormerV2."""
    import copy

    from deploy.profile import count_gmacs, count_params
    fused = copy.deepcopy(model).fuse()
    return {"params": count_params(model), "params_deploy": count_params(fused),
            "gmacs": count_gmacs(model, resolution)}


def main(argv: list[str] | None = None) -> int:
    from _cli import ArgumentParser, UsageError

    from backbones import create_model, list_models

    parser = ArgumentParser(prog="model_profile", description=__doc__)
    parser.add_argument("--model", default="efficientformerv2_s0", choices=list_models())
    parser.add_argument("--arch", metavar="SPEC",
                        help="a searched network (search.json, searched.yaml), an architecture JSON file, or an "
                             "inline JSON dict, instead of --model")
    parser.add_argument("--resolution", type=int, nargs="+", help="side, or height width (default: the searched "
                        "network's image size, else 224)")
    parser.add_argument("--num-classes", type=int, help="classes of the head (0: no head; default: the searched "
                        "network's, else 1000)")
    parser.add_argument("--distillation", action=argparse.BooleanOptionalAction, default=None,
                        help="with a distillation head (default: the searched network's, else with)")
    args = parser.parse_args(argv)
    if args.resolution is not None and (len(args.resolution) > 2 or min(args.resolution) < 1):
        parser.error(f"--resolution takes one side or a height and a width, each a positive number of pixels, "
                     f"got {' '.join(map(str, args.resolution))}")
    if args.num_classes is not None and args.num_classes < 0:
        parser.error(f"--num-classes must be 0 (no head) or more, got {args.num_classes}")
    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("distillation", args.distillation))
                 if v is not None}
    if args.arch:
        from classification.search import load_searched

        try:
            network = load_searched(args.arch)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--arch: {e}") from None
        model = network.build(**overrides)   # unrecorded: EfficientFormerV2's defaults (224, 1000, distillation)
        side = network.img_size or 224
        res = tuple(args.resolution) if args.resolution else (side, side)
        name = network.source if not network.source.startswith("the ") else "--arch"
        about = f" ({network.describe()})" if network.describe() else ""
    else:
        model, name, about = create_model(args.model, **overrides), args.model, ""
        res = tuple(args.resolution) if args.resolution else (224, 224)
    res = (res[0], res[-1])
    r = profile(model, res)
    print(f"{name}{about} at {res[0]}x{res[1]}: params {r['params']:,} (deploy form {r['params_deploy']:,}), "
          f"GMACs {r['gmacs']:.3f}")
    if args.arch and network.params is not None and not overrides and network.params != r["params"]:
        print(f"model_profile: warning: the search reported {network.params:,} parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from _cli import run

    sys.exit(run(main, "model_profile"))
