"""Benchmark: interleaved timing, records/JSON/CSV/table/plot of tiny runs (values, not speed), the
ExecuTorch and OpenVINO backends through tools/benchmark.py, models given as (label, module), and
the tool's answers to bad input."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from PIL import Image
from torch import nn

from backbones import create_model
from deploy.benchmark import (format_spread, format_table, plot_accuracy_latency, read_records, run_benchmark,
                              spread, write_csv, write_json)
from deploy.latency import LatencyStats, Timed, measure, measure_interleaved, summarize
from deploy.mes import mobile_efficiency_score
from deploy.models import replace_activations
from deploy.profile import count_params
from tool_runner import run_tool

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"model", "backend", "precision", "batch_size", "threads", "latency_ms_median", "latency_ms_p90",
            "params", "gmacs", "mes", "max_abs_diff"}
S0_PARAMS_224 = 3_600_256


def test_summarize_median_and_p90():
    s = summarize([float(v) for v in range(1, 11)])
    assert (s.median, s.p90, s.min, s.runs) == (5.5, 9.0, 1.0, 10)


def test_measure_interleaved_rotates_order_and_counts_runs():
    calls = []
    items = [Timed(k, lambda k=k: calls.append(k)) for k in "abc"]
    stats = measure_interleaved(items, runs=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]                 # warm-up
    assert calls[3:] == list("abc" "bca" "cab")          # round-robin, rotating start
    assert all(s.runs == 3 for s in stats.values())
    with pytest.raises(ValueError):
        measure_interleaved([Timed("a", lambda: None)] * 2)


def test_measure_uses_the_clock_for_each_timed_call():
    ticks = iter(range(100))
    calls = []
    stats = measure(lambda: calls.append(1), runs=4, warmup=2, clock=lambda: float(next(ticks)))
    assert len(calls) == 6 and isinstance(stats, LatencyStats)
    assert stats.runs == 4 and stats.median == 1000.0   # one tick per timed call, in ms


@pytest.fixture(scope="module")
def tiny_records():
    # two tiny runs: the project's S0 against a timm model, eager and ONNX Runtime, at 64 px
    return [run_benchmark(["efficientformerv2_s0", "mobilenetv2_050"], ["torch", "onnxruntime"], threads=1,
                          resolution=64, runs=3, warmup=1, baseline="mobilenetv2_050", ort_profile=True),
            run_benchmark(["timm:efficientformerv2_s0"], ["torch"], batch_size=2, threads=1, resolution=64,
                          runs=2, warmup=1)]


@pytest.mark.export
def test_records_have_the_interface_fields(tiny_records):
    first, second = tiny_records
    assert [(r["model"], r["backend"]) for r in first] == [
        ("efficientformerv2_s0", "torch"), ("efficientformerv2_s0", "onnxruntime"),
        ("mobilenetv2_050", "torch"), ("mobilenetv2_050", "onnxruntime")]
    for r in first + second:
        assert REQUIRED <= set(r) and r["precision"] == "fp32"
        assert r["latency_ms_p90"] >= r["latency_ms_median"] > 0
        assert r["mes"] == pytest.approx(mobile_efficiency_score(r["params"], r["latency_ms_median"] / r["batch_size"]),
                                         rel=1e-3, abs=1e-3)
    s0 = first[0]
    # built for the 64 px grid (smaller attention-bias tables than at 224), as timm's graph is
    assert abs(s0["params"] - S0_PARAMS_224) < 3_600 and s0["top1_paper"] == 75.7
    assert s0["gmacs"] == pytest.approx(0.396 * (64 / 224) ** 2, rel=0.1)
    assert first[1]["max_abs_diff"] <= 1e-4          # ONNX Runtime graph equals PyTorch
    assert first[1]["max_rel_diff"] == pytest.approx(first[1]["max_abs_diff"] / first[1]["output_abs_max"])
    ops = first[1]["ort_op_ms"]                      # where the time goes, per op type
    assert {"Conv", "Gelu"} <= set(ops) and all(v >= 0 for v in ops.values()) and sum(ops.values()) > 0
    assert "ort_op_ms" not in first[0]               # torch eager: no ONNX Runtime profile
    assert {r["vs_baseline"] for r in first if r["model"] == "mobilenetv2_050"} == {1.0}
    assert second[0]["batch_size"] == 2 and second[0]["params"] == s0["params"]


@pytest.mark.export
def test_json_csv_table_and_plot(tiny_records, tmp_path):
    records = tiny_records[0]
    back = json.loads(write_json(records, tmp_path / "bench.json").read_text())
    assert back == records
    rows = list(csv.DictReader(write_csv(records, tmp_path / "bench.csv").open()))
    assert [r["model"] for r in rows] == [r["model"] for r in records]
    assert json.loads(rows[1]["ort_op_ms"]) == records[1]["ort_op_ms"]   # nested values as JSON text
    table = format_table(records)
    assert "efficientformerv2_s0" in table and "median ms" in table and "x baseline" in table
    png = plot_accuracy_latency(records, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _record(model, ms, base_ms=None, **extra):
    r = {"model": model, "backend": "executorch", "precision": "fp32", "threads": 1, "batch_size": 1,
         "resolution": 224, "latency_ms_median": ms, **extra}
    if base_ms is not None:
        r["vs_baseline"] = round(ms / base_ms, 3)
    return r


def test_spread_of_repeated_runs():
    runs = [[_record("mnv2", 8.0, 8.0), _record("s0", 11.2, 8.0), _record("s0", 9.6, 8.0, activation="relu")],
            [_record("mnv2", 7.0, 7.0), _record("s0", 9.8, 7.0)],
            [_record("mnv2", 9.0, 9.0), _record("s0", 12.6, 9.0)]]
    rows = spread(runs)
    assert [(r["model"], r["activation"], r["runs"]) for r in rows] == [("mnv2", None, 3), ("s0", None, 3),
                                                                       ("s0", "relu", 1)]
    s0 = rows[1]
    assert s0["latency_ms"] == [11.2, 9.8, 12.6] and s0["vs_baseline"] == [1.4, 1.4, 1.4]
    assert (s0["latency_ms_median"], s0["latency_ms_min"], s0["latency_ms_max"]) == (11.2, 9.8, 12.6)
    assert s0["vs_baseline_median"] == 1.4 and rows[0]["vs_baseline_max"] == 1.0
    table = format_spread(rows).splitlines()
    assert "11.20 [9.80-12.60]" in table[3] and "1.40 [1.40-1.40]" in table[3]
    assert "relu" in table[4] and table[4].rstrip().endswith("1.20")          # one run: no range
    no_base = spread([[_record("s0", 5.0)], [_record("s0", 6.0)]])[0]
    assert no_base["vs_baseline_median"] is None and "5.50 [5.00-6.00]" in format_spread([no_base])
    mixed = format_spread(spread([[_record("s0", 5.0), _record("s0", 9.0, resolution=320)]])).splitlines()
    # header: px is the 6th column; rows: "as built" is two words, so the 7th field
    assert mixed[0].split()[5] == "px" and mixed[2].split()[6] == "224" and mixed[3].split()[6] == "320"
    assert " px " not in table[0]                                              # one resolution: no column
    with pytest.raises(ValueError, match="no benchmark runs"):
        spread([])
    with pytest.raises(ValueError, match="two records"):
        spread([[_record("s0", 5.0), _record("s0", 6.0)]])


def test_spread_tool(tmp_path):
    for i, (base, s0) in enumerate([(8.0, 11.0), (7.0, 10.5)]):
        write_json([_record("mnv2", base, base), _record("s0", s0, base)], tmp_path / f"run_{i}.json")
    out = tmp_path / "spread.json"
    proc = run_tool("benchmark_spread", tmp_path / "run_0.json", tmp_path / "run_1.json", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "1.44 [1.38-1.50]" in proc.stdout
    rows = json.loads(out.read_text())
    assert rows[1]["vs_baseline"] == [1.375, 1.5] and rows[1]["runs"] == 2
    # bad input: a missing file, a file that is not JSON, JSON that is not benchmark records
    (tmp_path / "notes.json").write_text("ratios: 1.4")
    (tmp_path / "other.json").write_text(json.dumps({"model": "s0"}))
    for path, words in [(tmp_path / "missing.json", ["no such file"]), (tmp_path / "notes.json", ["not a benchmark"]),
                        (tmp_path / "other.json", ["not a benchmark", "latency_ms_median"])]:
        proc = run_tool("benchmark_spread", tmp_path / "run_0.json", path)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("benchmark_spread: error:")]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert all(w in lines[0] for w in words), lines[0]
    assert read_records(tmp_path / "run_0.json")[0]["model"] == "mnv2"


def test_models_given_as_label_and_module():
    """A model built elsewhere (e.g. a switched architecture) is benchmarked under its label."""
    module = create_model("efficientformerv2_s0", img_size=64, num_classes=10)
    records = run_benchmark([("s0-10-classes", module), "mobilenetv2_050"], ["torch"], threads=1, resolution=64,
                            runs=2, warmup=1, baseline="s0-10-classes")
    assert [r["model"] for r in records] == ["s0-10-classes", "mobilenetv2_050"]
    mine = records[0]
    assert mine["params"] == count_params(module) and mine["top1_paper"] is None and mine["vs_baseline"] == 1.0
    with pytest.raises(ValueError, match="unique"):
        run_benchmark([("a", module), ("a", module)], ["torch"], runs=1, warmup=0)


def test_unknown_backend_and_model_and_options_are_refused():
    with pytest.raises(ValueError, match="backend"):
        run_benchmark(["efficientformerv2_s0"], ["tflite"])
    with pytest.raises(ValueError, match="unknown model"):
        run_benchmark(["mobilenetv9_100"], ["torch"], runs=1, warmup=0)
    with pytest.raises(ValueError, match="int8"):
        run_benchmark(["mobilenetv2_050"], ["torch"], int8=True)
    with pytest.raises(ValueError, match="int8"):
        run_benchmark(["mobilenetv2_050"], ["torch"], calibration="data")


def test_compile_backend_runs_and_equals_eager():
    (rec,) = run_benchmark(["efficientformerv2_s0"], ["compile"], threads=1, resolution=64, runs=2, warmup=1)
    assert rec["backend"] == "compile" and rec["latency_ms_median"] > 0
    assert rec["max_abs_diff"] <= 1e-4   # the compiled deploy form computes what eager does


# --------------------------------------------------------------------------------------------
# tools/benchmark.py: runs that time a runtime in a subprocess (ExecuTorch's threadpool takes one
# thread count per process); bad input in this process (tool_runner)
# --------------------------------------------------------------------------------------------
def _tool(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/benchmark.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def _toy_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    for c in range(classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 48), (40 * c + 10 * i, 100, 200 - 50 * c)).save(folder / f"{i}.png")
    return root


@pytest.mark.export
@pytest.mark.slow
def test_tool_executorch_and_openvino_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = _tool("--models", "mobilenetv2_050", "efficientformerv2_s0", "--backend", "executorch", "openvino",
                 "--threads", "2", "--resolution", "64", "--runs", "3", "--warmup", "1", "--et-profile",
                 "--ov-profile", "--thread-check", "--baseline", "mobilenetv2_050", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["model"], r["backend"]) for r in records] == [
        (m, b) for m in ("mobilenetv2_050", "efficientformerv2_s0") for b in ("executorch", "openvino")]
    for r in records:
        assert REQUIRED <= set(r) and r["threads"] == 2 and r["precision"] == "fp32"
        assert r["latency_ms_p90"] >= r["latency_ms_median"] > 0
        assert r["max_abs_diff"] <= 1e-4, r          # the runtime computes what PyTorch does
        if r["backend"] == "executorch":           # every operator delegated, time per XNNPACK operator
            assert r["undelegated_ops"] == {} and r["delegate_calls"] >= 1
            assert r["et_op_ms"]["Fully Connected (NC, F32) GEMM"] > 0
            assert not any(op.startswith("native_call") for op in r["et_op_ms"])
        else:
            # OpenVINO takes no more threads than the cores this process may run on
            assert r["ov_threads"] == min(2, len(os.sched_getaffinity(0))) and r["ov_precision"] == "f32"
            assert r["speedup_vs_1_thread"] > 0 and r["latency_ms_median_1_thread"] > 0
            # time per node, the activation named where the plugin fuses it into a convolution
            ops = r["ov_op_ms"]
            if r["model"] == "mobilenetv2_050":      # ReLU6 runs as a clamp inside the convolutions
                assert ops["Convolution+Clamp"] > 0 and not any("Gelu" in op for op in ops), ops
            else:
                assert ops["Convolution+Gelu"] > 0 and ops["MatMul"] > 0, ops
    assert "operators" in proc.stdout and "nodes" in proc.stdout and "x 1 thread" in proc.stdout


@pytest.mark.export
@pytest.mark.slow
def test_tool_int8_json(tmp_path):
    calib = _toy_folder(tmp_path / "calib")
    out = tmp_path / "bench.json"
    proc = _tool("--models", "mobilenetv2_050", "--backend", "executorch", "openvino", "--threads", "1",
                 "--resolution", "64", "--runs", "3", "--warmup", "1", "--int8", "--calibration", calib,
                 "--calibration-count", "2", "--ov-profile", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    # the int8 profile marks the nodes that compute in int8; the fp32 one has none
    assert any(op.endswith(" (int8)") and "Convolution" in op for op in records[3]["ov_op_ms"]), records[3]
    assert not any("(int8)" in op for op in records[2]["ov_op_ms"])
    assert [(r["backend"], r["precision"]) for r in records] == [
        ("executorch", "fp32"), ("executorch", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    for r in records:
        assert REQUIRED <= set(r) and r["latency_ms_median"] > 0
        if r["precision"] == "int8":              # the quantization error, measured, not bounded
            assert r["calibration"] == str(calib) and 0 < r["max_abs_diff"] < 10
    assert records[1]["undelegated_ops"] == {}
    assert "random data" not in proc.stdout       # calibrated on the given folder


@pytest.mark.export
def test_int8_on_random_data_says_it_is_a_speed_figure():
    logs = []
    records = run_benchmark(["mobilenetv2_050"], ["openvino"], threads=1, resolution=64, runs=2, warmup=0, int8=True,
                            calibration_count=1, log=logs.append)
    assert [(r["precision"], r.get("calibration")) for r in records] == [("fp32", None), ("int8", "random")]
    assert any("random data" in line and "speed" in line for line in logs)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("benchmark: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    (["--models", "mobilenetv9_100", "--backend", "torch"], ["unknown model", "mobilenetv9_100"]),
    (["--models", "mobilenetv2_050", "--backend", "tflite"], ["tflite"]),
    (["--models", "mobilenetv2_050", "--backend", "torch", "--int8"], ["--int8"]),
    (["--models", "mobilenetv2_050", "--backend", "executorch", "--calibration", "data"], ["--int8"]),
    (["--models", "mobilenetv2_050", "--backend", "executorch", "--int8", "--calibration", "no/such/dir"],
     ["no such folder"]),
])
def test_tool_bad_input(args, words):
    _assert_one_line_error(run_tool("benchmark", *args), *words)


def test_tool_unwritable_json_and_empty_calibration(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_tool("benchmark", "--models", "mobilenetv2_050", "--backend", "torch", "--json", blocker / "out.json")
    _assert_one_line_error(proc, "--json", "cannot be written")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    proc = run_tool("benchmark", "--models", "mobilenetv2_050", "--backend", "openvino", "--int8", "--calibration",
                    tmp_path / "empty")
    _assert_one_line_error(proc, "no image files")


@pytest.mark.parametrize("backend, package", [("executorch", "executorch"), ("openvino", "openvino")])
def test_tool_runtime_not_installed(tmp_path, backend, package):
    out = tmp_path / "bench.json"
    proc = run_tool("benchmark", "--models", "mobilenetv2_050", "--backend", backend, "--json", out, hide=(package,))
    _assert_one_line_error(proc, backend, "not installed", "make install")
    assert not out.exists()


def test_replace_activations_gives_the_papers_relu_protocol():
    s0 = create_model("efficientformerv2_s0", num_classes=10).eval()
    gelus = sum(isinstance(m, nn.GELU) for m in s0.modules())
    assert gelus > 0 and replace_activations(s0) == gelus
    assert not any(isinstance(m, nn.GELU) for m in s0.modules())
    mnv2 = timm.create_model("mobilenetv2_050")
    relu6 = sum(isinstance(m, nn.ReLU6) for m in mnv2.modules())
    assert relu6 > 0 and replace_activations(mnv2) == relu6
    effnet = timm.create_model("efficientnet_b0")  # SiLU replaced, the squeeze-excitation gates kept
    sigmoids = sum(isinstance(m, nn.Sigmoid) for m in effnet.modules())
    assert replace_activations(effnet) > 0 and not any(isinstance(m, nn.SiLU) for m in effnet.modules())
    assert sum(isinstance(m, nn.Sigmoid) for m in effnet.modules()) == sigmoids


def test_benchmark_with_relu_protocol_leaves_the_callers_module():
    given = create_model("efficientformerv2_s0", num_classes=10).eval()
    records = run_benchmark([("s0-10", given), "mobilenetv2_050"], ["torch"], threads=1, resolution=64,
                            runs=2, warmup=1, activation="relu")
    assert [r["activation"] for r in records] == ["relu", "relu"]
    assert records[0]["activations_replaced"] == sum(isinstance(m, nn.GELU) for m in given.modules()) > 0
    assert records[1]["activations_replaced"] > 0    # MobileNetV2's ReLU6
    assert "activation" in format_table(records)
    with pytest.raises(ValueError, match="activation"):
        run_benchmark(["mobilenetv2_050"], ["torch"], activation="hardswish")


def test_tool_json_records_carry_their_command_for_the_records_page(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_tool("benchmark", "--models", "mobilenetv2_050", "--backend", "torch", "--resolution", 32,
                    "--runs", 2, "--warmup", 0, "--threads", 1, "--json", out)
    assert proc.returncode == 0, proc.stderr
    (record,) = read_records(out)
    assert record["command"] == ("python tools/benchmark.py --models mobilenetv2_050 --backend torch --resolution 32 "
                                 f"--runs 2 --warmup 0 --threads 1 --json {out}")
    assert record["date"].endswith("UTC") and record["cpu"] and len(record["load_average_before"]) == 3
    from deploy.records import load_record_file
    assert load_record_file(out).command == record["command"]   # what the records page prints
