"""A prepared check of the suite on a CUDA GPU, inside ten minutes on an H100.

    python tools/gpu_check.py [--parts fit mask-rcnn fpn infer] [--json benchmarks/records/gpu_check.json]

Parts (all by default):
  fit        a short Lightning fit of EfficientFormerV2-S0 (`classification.ImageClassifier`, batch
             128 at 224 px, synthetic batches on the GPU) in bf16-mixed, and in 16-mixed with the
             model and images channels_last: images/s after a warm-up (`classification.throughput`).
  mask-rcnn  Mask R-CNN with the S0 backbone (configs/detection/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py,
             2 images per iteration as per GPU in the paper's schedule, every image 1333x800, the
             config's largest input): seconds per training iteration and peak memory
             (`torch.cuda.max_memory_allocated`), on generated toy COCO images, random weights
             (`openmmlab.train_iteration`).
  fpn        Semantic FPN with the S0 backbone (configs/segmentation/fpn_efficientformerv2-s0_ade20k-512x512_40k.py,
             4 images of 512x512 per iteration), the same way on toy ADE20K images.
  infer      S0 (deploy form, fp32) inference at batch 1 and 64, 224 px: eager, torch.compile,
             AOTInductor and, where onnxruntime has the TensorrtExecutionProvider, TensorRT through
             ONNX Runtime (else listed as not installed) (`deploy.accelerated`).

The last line of the output sums it up; --json writes every figure as a benchmark record (the
records page's format, `make records`) with the GPU's name, the torch, CUDA and cuDNN versions, the
command, the date and the CPU. A part that fails is reported (traceback on
stderr, `error` in the JSON) and the others still run; the exit status is then 1. Without a CUDA
device the script says so in one line and exits with status 2, writing nothing.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from _cli import ArgumentParser, check_writable, run

ROOT = Path(__file__).resolve().parents[1]
DET_CONFIG = ROOT / "configs/detection/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py"
SEG_CONFIG = ROOT / "configs/segmentation/fpn_efficientformerv2-s0_ade20k-512x512_40k.py"
PARTS = ("fit", "mask-rcnn", "fpn", "infer")

# sizes of the GPU run: small enough for ten minutes in all, timed after a warm-up
FIT = dict(batch_size=128, image_size=224, steps=30, warmup_steps=10)
DENSE = dict(iterations=5, warmup=2)
INFER = dict(batch_sizes=(1, 64), resolution=224, runs=50, warmup=10)


FIT_SETTINGS = (("bf16", "bf16-mixed", False), ("16-mixed+cl", "16-mixed", True))  # name, precision, channels_last


def run_fit(device: str, workdir: Path, settings: tuple = FIT_SETTINGS, **sizes: Any) -> dict:
    """S0 fit throughput in each setting (default: bf16-mixed, and 16-mixed with channels_last)."""
    from classification.throughput import fit_throughput
    sizes = {**FIT, **sizes}
    return {name: fit_throughput(device, precision=precision, channels_last=channels_last, **sizes)
            for name, precision, channels_last in settings}


def run_mask_rcnn(device: str, workdir: Path, input_size: tuple[int, int] = (800, 1333), **sizes: Any) -> dict:
    """One timed Mask R-CNN training iteration (after warm-up ones) on toy COCO images."""
    from detection.toy_data import CLASSES, make_toy_coco
    from openmmlab.train_iteration import train_iteration
    sizes = {**DENSE, **sizes}
    root = make_toy_coco(workdir / "toy_coco", sizes={"train": 4 * (sizes["iterations"] + sizes["warmup"])})
    return train_iteration(DET_CONFIG, root, device, input_size=input_size,
                           cfg_options={"train_dataloader.dataset.metainfo": {"classes": list(CLASSES)}}, **sizes)


def run_fpn(device: str, workdir: Path, input_size: tuple[int, int] | None = None, **sizes: Any) -> dict:
    """One timed Semantic FPN training iteration (after warm-up ones) on toy ADE20K images; the
    config's own pipeline (512x512 crops) unless `input_size` is given."""
    from openmmlab.train_iteration import train_iteration
    from segmentation.toy_data import make_toy_ade20k
    sizes = {**DENSE, **sizes}
    root = make_toy_ade20k(workdir / "toy_ade20k", sizes={"training": 4 * (sizes["iterations"] + sizes["warmup"])})
    return train_iteration(SEG_CONFIG, root, device, input_size=input_size, **sizes)


def run_infer(device: str, workdir: Path, **sizes: Any) -> list[dict]:
    """S0 inference latency per runtime at batch 1 and 64."""
    from deploy.accelerated import benchmark_accelerated
    return benchmark_accelerated("efficientformerv2_s0", device=device,
                                 log=lambda s: print(f"gpu_check: infer: {s}", file=sys.stderr, flush=True),
                                 **{**INFER, **sizes})


PART_FUNCTIONS: dict[str, Callable[..., Any]] = {"fit": run_fit, "mask-rcnn": run_mask_rcnn, "fpn": run_fpn,
                                                 "infer": run_infer}


def gpu_info() -> dict | None:
    """Name and versions of the CUDA device torch sees, None when it sees none."""
    import torch
    if not torch.cuda.is_available():
        return None
    return {"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def _dense(result: dict, name: str) -> str:
    if "error" in result:
        return f"{name} failed"
    mem = result.get("peak_memory_gib")
    return f"{name} {result['seconds_per_iter']:.3f} s/iter" + (f" {mem:.2f} GiB" if mem is not None else "")


def _infer(records: Any) -> str:
    if isinstance(records, dict):  # the part failed
        return "S0 inference failed"
    short = {"eager": "eager", "compile": "compile", "aoti": "aoti", "tensorrt": "trt"}
    parts = []
    for batch in dict.fromkeys(r["batch_size"] for r in records):
        cells = []
        for r in (r for r in records if r["batch_size"] == batch):
            if "latency_ms_median" in r:
                cells.append(f"{short.get(r['runtime'], r['runtime'])} {r['latency_ms_median']:.2f}")
            elif "skipped" in r:
                cells.append(f"{short.get(r['runtime'], r['runtime'])} "
                             f"{'not installed' if 'not installed' in r['skipped'] else 'n/a'}")
            else:
                cells.append(f"{short.get(r['runtime'], r['runtime'])} failed")
        parts.append(f"b{batch} " + " ".join(cells) + " ms")
    return "S0 " + "; ".join(parts)


def summary_line(gpu: str, results: dict, seconds: float) -> str:
    """`gpu-check: <gpu> fit bf16 <N> img/s, 16-mixed+cl <N> img/s; mask-rcnn <s> s/iter <GiB>; fpn ...;
    S0 b1 eager <ms> compile <ms> aoti <ms> trt <ms or not installed> ms; b64 ... in <seconds> s`."""
    pieces = []
    if "fit" in results:
        fit = results["fit"]
        if "error" in fit:
            pieces.append("fit failed")
        else:
            pieces.append(", ".join(f"{'fit ' if i == 0 else ''}{k} {v.get('images_per_s') or 0:.0f} img/s"
                                    for i, (k, v) in enumerate(fit.items())))
    if "mask-rcnn" in results:
        pieces.append(_dense(results["mask-rcnn"], "mask-rcnn"))
    if "fpn" in results:
        pieces.append(_dense(results["fpn"], "fpn"))
    if "infer" in results:
        pieces.append(_infer(results["infer"]))
    return f"gpu-check: {gpu} " + "; ".join(pieces) + f" in {seconds:.0f} s"


def to_records(results: dict, info: dict, prov: dict) -> list[dict]:
    """The figures as benchmark records (model, backend, latency_ms_median, ...; the records page's
    format), each with the GPU, the versions and the provenance (command, date, CPU)."""
    common = {**info, **prov}
    out: list[dict] = []

    def failed(part: str, model: str, backend: str) -> dict:
        return {"part": part, "model": model, "backend": backend, "latency_ms_median": None,
                "note": f"failed: {results[part]['error']}", **common}
    fit = results.get("fit")
    if fit is not None:
        if "error" in fit:
            out.append(failed("fit", "efficientformerv2_s0", "lightning fit"))
        for setting, r in ({} if "error" in fit else fit).items():
            out.append({"part": "fit", "setting": setting, "model": r.get("model", "efficientformerv2_s0"),
                        "backend": f"lightning fit {setting}", "precision": r.get("precision"),
                        "batch_size": r.get("batch_size"), "resolution": r.get("image_size"),
                        "latency_ms_median": r.get("step_ms_median"),
                        "note": f"training step; {r.get('images_per_s') or 0:.0f} images/s", **r, **common})
    for part, config, backend in (("mask-rcnn", DET_CONFIG, "mmdet train_step"),
                                  ("fpn", SEG_CONFIG, "mmseg train_step")):
        r = results.get(part)
        if r is None:
            continue
        if "error" in r:
            out.append(failed(part, config.stem, backend))
            continue
        shape = r.get("input_shape") or []
        size = f"{shape[-2]}x{shape[-1]}" if len(shape) == 4 else "?"
        mem = r.get("peak_memory_gib")
        out.append({"part": part, "model": config.stem, "backend": backend, "precision": "fp32",
                    "batch_size": r.get("batch_size"), "latency_ms_median": round(1e3 * r["seconds_per_iter"], 2),
                    "note": f"training iteration at {size}" + (f", peak {mem:.2f} GiB" if mem is not None else ""),
                    **r, **common})
    infer = results.get("infer")
    if infer is not None:
        if isinstance(infer, dict):
            out.append(failed("infer", "efficientformerv2_s0", "inference"))
        else:
            for r in infer:
                note = r.get("skipped") or (f"failed: {r['error']}" if "error" in r else None)
                out.append({"part": "infer", "model": "efficientformerv2_s0", "backend": r["runtime"], "precision": "fp32",
                            "latency_ms_median": None, **r, **({"note": note} if note else {}), **common})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="gpu_check", description=__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/records/gpu_check.json"),
                        help="where the figures go, as benchmark records (default: %(default)s)")
    args = parser.parse_args(argv)
    info = gpu_info()
    if info is None:
        print("gpu_check: error: no CUDA device: torch sees none (torch.cuda.is_available() is False); "
              "run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    check_writable(args.json, "--json")
    from deploy.records import provenance
    prov = provenance(None if argv is None else ["tools/gpu_check.py", *argv])
    start = time.perf_counter()
    print(f"gpu_check: {info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}", flush=True)
    results: dict[str, Any] = {}
    failed = []
    parts = [p for p in PARTS if p in args.parts]
    with tempfile.TemporaryDirectory(prefix="efv2-gpu-check-") as tmp:
        for part in parts:
            t0 = time.perf_counter()
            print(f"gpu_check: {part} ...", flush=True)
            try:
                results[part] = PART_FUNCTIONS[part]("cuda", Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the others' figures
                traceback.print_exc()
                results[part] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]}
                failed.append(part)
            print(f"gpu_check: {part} took {time.perf_counter() - t0:.1f} s", flush=True)
            print(json.dumps(results[part], indent=1, default=str), flush=True)
    seconds = time.perf_counter() - start
    line = summary_line(info["gpu"], results, seconds)
    records = to_records(results, {**info, "gpu_check_seconds": round(seconds, 1)}, prov)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=2, default=str) + "\n")
    print(f"json: {args.json}")
    if failed:
        print(f"gpu_check: failed parts: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(main, "gpu_check"))
