"""Parameters (all, and in the fused deploy form) and GMACs of a model at a resolution.

    python tools/profile.py --model efficientformerv2_s0 [--resolution 224] [--arch arch.json]

GMACs are counted with torch.utils.flop_counter (convolutions, linear layers and attention
matmuls), halved to multiply-accumulates.
"""
import sys

if __name__ == "profile":
    # Any script in tools/ puts tools/ first on sys.path, so the standard library's `profile`
    # (imported by cProfile, which torch imports) resolves to this file: hand over to the real one.
    import importlib.util
    import sysconfig
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location("profile", Path(sysconfig.get_paths()["stdlib"]) / "profile.py")
    _stdlib = importlib.util.module_from_spec(_spec)
    sys.modules["profile"] = _stdlib
    _spec.loader.exec_module(_stdlib)


def profile(model, resolution: tuple[int, int]) -> dict:
    """Parameter counts (trainable form and deploy form) and GMACs per image of an EfficientFormerV2."""
    import copy

    from deploy.profile import count_gmacs, count_params
    fused = copy.deepcopy(model).fuse()
    return {"params": count_params(model), "params_deploy": count_params(fused),
            "gmacs": count_gmacs(model, resolution)}


def main(argv: list[str] | None = None) -> int:
    import json
    from pathlib import Path

    from _cli import ArgumentParser, UsageError

    from backbones import EfficientFormerV2, create_model, list_models

    parser = ArgumentParser(prog="profile", description=__doc__)
    parser.add_argument("--model", default="efficientformerv2_s0", choices=list_models())
    parser.add_argument("--arch", type=Path, help="JSON architecture (a searched network) instead of --model")
    parser.add_argument("--resolution", type=int, nargs="+", default=[224], help="side, or height width")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the head (0: no head)")
    args = parser.parse_args(argv)
    if len(args.resolution) > 2 or min(args.resolution) < 1:
        parser.error(f"--resolution takes one side or a height and a width, each a positive number of pixels, "
                     f"got {' '.join(map(str, args.resolution))}")
    if args.num_classes < 0:
        parser.error(f"--num-classes must be 0 (no head) or more, got {args.num_classes}")
    res = (args.resolution[0], args.resolution[-1])
    if args.arch:
        try:
            arch = json.loads(args.arch.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"--arch {args.arch} is not JSON ({e}): give an architecture dict such as "
                             '{"base": "s0", "attention": [0, 0, 2, 2]}') from None
        if not isinstance(arch, dict):
            raise UsageError(f"--arch {args.arch} holds a JSON {type(arch).__name__}, not an architecture dict")
        model = EfficientFormerV2(arch, num_classes=args.num_classes)
        name = str(args.arch)
    else:
        model, name = create_model(args.model, num_classes=args.num_classes), args.model
    r = profile(model, res)
    print(f"{name} at {res[0]}x{res[1]}: params {r['params']:,} (deploy form {r['params_deploy']:,}), "
          f"GMACs {r['gmacs']:.3f}")
    return 0


if __name__ == "__main__":
    from _cli import run

    sys.exit(run(main, "profile"))
