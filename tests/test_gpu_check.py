"""The prepared GPU check (tools/gpu_check.py) and its parts, run on the CPU at tiny sizes: the
Lightning fit throughput, one dense training iteration, the inference timing, the tool's summary,
JSON and its one-line exit without CUDA."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from classification.throughput import ThroughputMeter, fit_throughput
from deploy.accelerated import benchmark_accelerated, runtime_unavailable
from tool_runner import ROOT, load_tool

PYTHON = ROOT / ".venv" / "bin" / "python"


def test_without_cuda_the_tool_says_so_in_one_line_and_exits_2(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    got = subprocess.run([python, "tools/gpu_check.py", "--json", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 2, got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and lines[0].startswith("gpu_check: error:")
    assert got.stdout == "" and not out.exists()


class _Module:
    device = torch.device("cpu")


def test_throughput_meter_times_only_the_steps_after_the_warm_up():
    ticks = iter(range(100))
    meter = ThroughputMeter(warmup_steps=2, clock=lambda: float(next(ticks)))
    meter.on_train_start(None, _Module())
    batch = (torch.zeros(4, 3, 8, 8), torch.zeros(4))
    for i in range(5):
        meter.on_train_batch_start(None, _Module(), batch, i)
        meter.on_train_batch_end(None, _Module(), None, batch, i)
    # steps 2..4 timed, each one tick long
    assert (meter.steps, meter.images, meter.seconds) == (3, 12, 3.0)
    assert meter.images_per_s == 4.0
    with pytest.raises(ValueError):
        ThroughputMeter(-1)


@pytest.mark.parametrize("precision,channels_last", [
    ("32-true", True), pytest.param("bf16-mixed", False, marks=pytest.mark.slow)])  # CPU bf16: minutes here
def test_fit_throughput_on_cpu(precision, channels_last):
    got = fit_throughput("cpu", precision=precision, channels_last=channels_last, batch_size=4, image_size=32,
                         steps=2, warmup_steps=1, num_classes=10)
    assert got["steps"] == 2 and got["images"] == 8
    assert got["images_per_s"] > 0 and got["step_ms_median"] > 0
    assert math.isfinite(got["final_loss"])
    assert got["precision"] == precision and got["channels_last"] is channels_last
    assert "peak_memory_gib" not in got


def test_tool_part_fit_on_cpu(tmp_path):
    tool = load_tool("gpu_check")
    assert [s[0] for s in tool.FIT_SETTINGS] == ["bf16", "16-mixed+cl"]
    got = tool.run_fit("cpu", tmp_path, settings=(("fp32+cl", "32-true", True),), batch_size=2, image_size=32,
                       steps=1, warmup_steps=1)
    assert list(got) == ["fp32+cl"] and got["fp32+cl"]["channels_last"] and got["fp32+cl"]["images"] == 2


@pytest.mark.mm
def test_mask_rcnn_iteration_on_cpu(tmp_path):
    tool = load_tool("gpu_check")
    got = tool.run_mask_rcnn("cpu", tmp_path, input_size=(64, 96), iterations=1, warmup=0)
    assert got["task"] == "mmdet" and got["batch_size"] == 2
    assert got["input_shape"] == [2, 3, 64, 96]
    assert got["seconds_per_iter"] > 0 and math.isfinite(got["loss"])
    assert got["peak_memory_gib"] is None
    assert got["config"].endswith("mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py")


@pytest.mark.mm
def test_semantic_fpn_iteration_on_cpu(tmp_path):
    tool = load_tool("gpu_check")
    got = tool.run_fpn("cpu", tmp_path, input_size=(64, 64), iterations=1, warmup=1)
    assert got["task"] == "mmseg" and got["batch_size"] == 4
    assert got["input_shape"] == [4, 3, 64, 64]
    assert len(got["iteration_seconds"]) == 1 and math.isfinite(got["loss"])


@pytest.mark.mm
def test_set_train_input_size_rewrites_resizes_crops_and_the_preprocessor():
    from openmmlab.runner import load_config
    from openmmlab.train_iteration import set_train_input_size
    cfg = load_config(ROOT / "configs/segmentation/fpn_efficientformerv2-s0_ade20k-512x512_40k.py")
    set_train_input_size(cfg, (48, 80))
    steps = {s["type"]: s for s in cfg.train_dataloader.dataset.pipeline}
    assert "RandomResize" not in steps
    assert tuple(steps["Resize"]["scale"]) == (80, 48) and steps["Resize"]["keep_ratio"] is False
    assert tuple(steps["RandomCrop"]["crop_size"]) == (48, 80)
    assert tuple(cfg.model.data_preprocessor.size) == (48, 80)


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def test_inference_eager_on_cpu_and_tensorrt_not_installed():
    records = benchmark_accelerated("efficientformerv2_s0", batch_sizes=(1, 2), runtimes=("eager", "tensorrt"),
                                    device="cpu", resolution=32, runs=2, warmup=1)
    assert [(r["runtime"], r["batch_size"]) for r in records] == [("eager", 1), ("tensorrt", 1), ("eager", 2),
                                                                   ("tensorrt", 2)]
    for r in records:
        if r["runtime"] == "eager":
            assert r["latency_ms_median"] > 0 and r["max_abs_diff"] == 0.0
            assert r["images_per_s"] == pytest.approx(1e3 * r["batch_size"] / r["latency_ms_median"], rel=1e-3)
        else:
            assert "latency_ms_median" not in r
            assert r["skipped"] == runtime_unavailable("tensorrt", torch.device("cpu"))
            assert r["skipped"]


def test_inference_compile_and_onnxruntime_binding_on_cpu():
    """torch.compile, and the ONNX Runtime path of the TensorRT runtime (I/O binding) on the CPU
    provider; parity against eager."""
    records = benchmark_accelerated(_tiny(), batch_sizes=(2,), runtimes=("compile", "tensorrt"), device="cpu",
                                    resolution=32, runs=2, warmup=1, ort_providers=["CPUExecutionProvider"])
    by = {r["runtime"]: r for r in records}
    assert set(by) == {"eager", "compile", "tensorrt"}
    for runtime in ("compile", "tensorrt"):
        assert "error" not in by[runtime], by[runtime]
        assert by[runtime]["latency_ms_median"] > 0 and by[runtime]["max_abs_diff"] < 1e-5
    assert by["tensorrt"]["providers"] == ["CPUExecutionProvider"]


def test_a_failing_runtime_is_recorded_and_the_others_measured(monkeypatch):
    import deploy.accelerated as acc
    real = acc.prepare

    def prepare(model, x, runtime, *args, **kwargs):
        if runtime == "compile":
            raise RuntimeError("inductor exploded")
        return real(model, x, runtime, *args, **kwargs)
    monkeypatch.setattr(acc, "prepare", prepare)
    records = benchmark_accelerated(_tiny(), batch_sizes=(1,), runtimes=("eager", "compile"), device="cpu",
                                    resolution=32, runs=2, warmup=0)
    assert records[0]["latency_ms_median"] > 0
    assert "inductor exploded" in records[1]["error"] and "latency_ms_median" not in records[1]


@pytest.mark.slow
def test_inference_aoti_on_cpu():
    records = benchmark_accelerated(_tiny(), batch_sizes=(1,), runtimes=("aoti",), device="cpu", resolution=32,
                                    runs=2, warmup=1)
    aoti = records[1]
    assert aoti["runtime"] == "aoti" and "error" not in aoti, aoti
    assert aoti["latency_ms_median"] > 0 and aoti["max_abs_diff"] < 1e-5


def test_tool_summary_line_and_json_with_stand_in_parts(tmp_path, monkeypatch, capsys):
    tool = load_tool("gpu_check")
    monkeypatch.setattr(tool, "gpu_info", lambda: {"gpu": "Fake GPU 80GB", "gpu_count": 1, "torch": "2.x",
                                                   "cuda": "12.x", "cudnn": 90000})
    fit = {"bf16": {"images_per_s": 3210.4}, "16-mixed+cl": {"images_per_s": 3555.6}}
    dense = {"seconds_per_iter": 0.1234, "peak_memory_gib": 3.21}
    infer = [{"runtime": "eager", "batch_size": 1, "latency_ms_median": 4.0},
             {"runtime": "compile", "batch_size": 1, "latency_ms_median": 1.5},
             {"runtime": "aoti", "batch_size": 1, "latency_ms_median": 1.25},
             {"runtime": "tensorrt", "batch_size": 1, "skipped": "not installed (no provider)"},
             {"runtime": "compile", "batch_size": 64, "latency_ms_median": 9.0}]
    seen = []

    def part(result):
        def run(device, workdir):
            seen.append(device)
            return result
        return run
    monkeypatch.setattr(tool, "PART_FUNCTIONS", {"fit": part(fit), "mask-rcnn": part(dense), "fpn": part(dense),
                                                 "infer": part(infer)})
    out = tmp_path / "records" / "gpu.json"
    assert tool.main(["--json", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu-check: Fake GPU 80GB fit bf16 3210 img/s, 16-mixed+cl 3556 img/s; "
                           "mask-rcnn 0.123 s/iter 3.21 GiB; fpn 0.123 s/iter 3.21 GiB; "
                           "S0 b1 eager 4.00 compile 1.50 aoti 1.25 trt not installed ms; b64 compile 9.00 ms in ")
    assert last.endswith(" s") and seen == ["cuda"] * 4
    records = json.loads(out.read_text())
    assert [(r["part"], r["backend"]) for r in records] == [
        ("fit", "lightning fit bf16"), ("fit", "lightning fit 16-mixed+cl"), ("mask-rcnn", "mmdet train_step"),
        ("fpn", "mmseg train_step"), ("infer", "eager"), ("infer", "compile"), ("infer", "aoti"),
        ("infer", "tensorrt"), ("infer", "compile")]
    for r in records:
        assert r["gpu"] == "Fake GPU 80GB" and r["cuda"] == "12.x" and r["torch"] == "2.x"
        assert "tools/gpu_check.py" in r["command"] and r["date"] and r["cpu"]
    assert records[2]["latency_ms_median"] == pytest.approx(123.4) and records[2]["peak_memory_gib"] == 3.21
    assert records[7]["latency_ms_median"] is None and "not installed" in records[7]["note"]
    # the records page takes the file as it takes the benchmarks'
    from deploy.records import load_record_file
    assert load_record_file(out).command == records[0]["command"]

    # a part that fails is reported, the others still run, exit status 1; --parts picks a subset
    def broken(device, workdir):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(tool, "PART_FUNCTIONS", {**tool.PART_FUNCTIONS, "fpn": broken})
    assert tool.main(["--json", str(out), "--parts", "fpn", "infer"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("gpu-check: Fake GPU 80GB fpn failed; S0 b1 eager")
    records = json.loads(out.read_text())
    assert [r["part"] for r in records] == ["fpn"] + ["infer"] * 5
    assert records[0]["latency_ms_median"] is None and "out of memory" in records[0]["note"]
