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


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    from backbones import EfficientFormerV2, create_model, list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientformerv2_s0", choices=list_models())
    parser.add_argument("--arch", type=Path, help="JSON architecture (a searched network) instead of --model")
    parser.add_argument("--resolution", type=int, nargs="+", default=[224], help="side, or height width")
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args()
    res = (args.resolution[0], args.resolution[-1])
    if args.arch:
        model = EfficientFormerV2(json.loads(args.arch.read_text()), num_classes=args.num_classes)
        name = str(args.arch)
    else:
        model, name = create_model(args.model, num_classes=args.num_classes), args.model
    r = profile(model, res)
    print(f"{name} at {res[0]}x{res[1]}: params {r['params']:,} (deploy form {r['params_deploy']:,}), "
          f"GMACs {r['gmacs']:.3f}")


if __name__ == "__main__":
    main()
