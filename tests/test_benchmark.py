"""Benchmark: interleaved timing, records/JSON/CSV/table/plot of two tiny runs (values, not speed)."""
import csv
import json

import pytest

from deploy.benchmark import format_table, plot_accuracy_latency, run_benchmark, write_csv, write_json
from deploy.latency import Timed, measure_interleaved, summarize
from deploy.mes import mobile_efficiency_score

REQUIRED = {"model", "backend", "batch_size", "threads", "latency_ms_median", "latency_ms_p90", "params",
            "gmacs", "mes"}


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


@pytest.fixture(scope="module")
def tiny_records():
    # two tiny runs: the project's S0 against a timm model, eager and ONNX Runtime, at 64 px
    return [run_benchmark(["efficientformerv2_s0", "mobilenetv2_050"], ["torch", "onnxruntime"], threads=1,
                          resolution=64, runs=3, warmup=1, baseline="mobilenetv2_050", ort_profile=True),
            run_benchmark(["timm:efficientformerv2_s0"], ["torch"], batch_size=2, threads=1, resolution=64,
                          runs=2, warmup=1)]


def test_records_have_the_interface_fields(tiny_records):
    first, second = tiny_records
    assert [(r["model"], r["backend"]) for r in first] == [
        ("efficientformerv2_s0", "torch"), ("efficientformerv2_s0", "onnxruntime"),
        ("mobilenetv2_050", "torch"), ("mobilenetv2_050", "onnxruntime")]
    for r in first + second:
        assert REQUIRED <= set(r)
        assert r["latency_ms_p90"] >= r["latency_ms_median"] > 0
        assert r["mes"] == pytest.approx(mobile_efficiency_score(r["params"], r["latency_ms_median"] / r["batch_size"]),
                                         rel=1e-3, abs=1e-3)
    s0 = first[0]
    assert s0["params"] == 3_600_256 and s0["top1_paper"] == 75.7
    assert s0["gmacs"] == pytest.approx(0.396 * (64 / 224) ** 2, rel=0.1)
    assert first[1]["max_abs_diff"] <= 1e-4          # ONNX Runtime graph equals PyTorch
    ops = first[1]["ort_op_ms"]                      # where the time goes, per op type
    assert {"Conv", "Gelu"} <= set(ops) and all(v >= 0 for v in ops.values()) and sum(ops.values()) > 0
    assert "ort_op_ms" not in first[0]               # torch eager: no ONNX Runtime profile
    assert {r["vs_baseline"] for r in first if r["model"] == "mobilenetv2_050"} == {1.0}
    # timm's graph at 64 px (its bias tables follow its img_size): same network size within 0.1%
    assert second[0]["batch_size"] == 2 and abs(second[0]["params"] - 3_600_256) < 3_600


def test_json_csv_table_and_plot(tiny_records, tmp_path):
    records = tiny_records[0]
    back = json.loads(write_json(records, tmp_path / "bench.json").read_text())
    assert back == records
    rows = list(csv.DictReader(write_csv(records, tmp_path / "bench.csv").open()))
    assert [r["model"] for r in rows] == [r["model"] for r in records]
    table = format_table(records)
    assert "efficientformerv2_s0" in table and "median ms" in table and "x baseline" in table
    png = plot_accuracy_latency(records, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_backend_and_model_are_refused():
    with pytest.raises(ValueError, match="backend"):
        run_benchmark(["efficientformerv2_s0"], ["tflite"])
    with pytest.raises(ValueError, match="unknown model"):
        run_benchmark(["mobilenetv9_100"], ["torch"], runs=1, warmup=0)


def test_compile_backend_runs_and_equals_eager():
    (rec,) = run_benchmark(["efficientformerv2_s0"], ["compile"], threads=1, resolution=64, runs=2, warmup=1)
    assert rec["backend"] == "compile" and rec["latency_ms_median"] > 0
    assert rec["max_abs_diff"] <= 1e-4   # the compiled deploy form computes what eager does
