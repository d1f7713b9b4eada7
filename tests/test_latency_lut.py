"""Latency table on the deploy runtimes (ExecuTorch + XNNPACK, OpenVINO): entries net of the
runtime's fixed cost, predictions, the whole-network check, the single timer, and the tool's
answers to bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.layers import trunc_normal_
from torch import nn

import deploy.latency_lut as lut
from backbones import EfficientFormerV2
from backbones.layers import LayerScale, OffsetAttentionBias
from backbones.supernet import SearchSpace
from deploy.latency import LatencyStats
from deploy.latency_lut import (LatencyTable, build_latency_table, evaluate_table, measure_latency, subnet_keys,
                                table_entries)
from tool_runner import run_tool

ROOT = Path(__file__).resolve().parents[1]
# one width per stage, two in stage 2: 14 entries (stem, 5 downsamplings, 5 FFNs, 2 MHSAs, head)
TINY = SearchSpace(widths=((8,), (8, 16), (16,), (16,)), depths=(1, 1, 1, 1), expansions=(2,), stem_widths=(8,))
TINY_ENTRIES = 14


def _assert_runtime_table(table: LatencyTable, backend: str) -> None:
    assert table.backend == backend and len(table.entries) == TINY_ENTRIES
    assert set(table.entries) >= set(subnet_keys(TINY.largest()))
    # net of the runtime's per-run cost: a block cheaper than a pass-through graph counts 0
    assert all(0 <= ms < 100 for ms in table.entries.values())
    assert 0 < table.overhead_ms < 100     # the fixed cost, added once per prediction
    assert table.predict(TINY.smallest()) == pytest.approx(
        sum(table.entries[k] for k in subnet_keys(TINY.smallest())) + table.overhead_ms)


def test_lut_times_through_the_single_timer(monkeypatch):
    """Every LUT timing is `deploy.latency.measure` (median of its stats)."""
    calls = []

    def fake_measure(fn, runs, warmup):
        fn()
        calls.append((runs, warmup))
        return LatencyStats(median=1.5, p90=2.0, mean=1.6, min=1.0, runs=runs)

    monkeypatch.setattr(lut, "measure", fake_measure)
    table = build_latency_table(TINY, img_size=32, threads=1, warmup=3, runs=7, num_classes=3)
    assert set(table.entries.values()) == {1.5} and calls == [(7, 3)] * TINY_ENTRIES
    with pytest.raises(ValueError, match="unknown backend"):
        measure_latency(lut._PassThrough(3), (1, 3, 8, 8), "tflite")


def test_pass_through_is_the_identity_in_the_convolution_layout():
    x = torch.randn(1, 5, 7, 9)
    with torch.no_grad():
        assert torch.equal(lut._PassThrough(5)(x), x)


@pytest.mark.export
def test_openvino_table_round_trip_and_check(tmp_path):
    table = build_latency_table(TINY, img_size=32, backend="openvino", threads=1, warmup=1, runs=2, num_classes=3)
    _assert_runtime_table(table, "openvino")
    loaded = LatencyTable.load(table.save(tmp_path / "lut_ov.json"))
    assert loaded == table
    report = evaluate_table(loaded, num_subnets=2, warmup=1, runs=2)
    assert report.predicted_ms == [loaded.predict(TINY.largest()), loaded.predict(TINY.smallest())]
    assert all(m > 0 for m in report.measured_ms) and -1 <= report.pearson_r <= 1


def _tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/build_latency_lut.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY.to_dict()))
    return path


@pytest.mark.export
@pytest.mark.slow
def test_executorch_table_with_the_tool(tmp_path):
    """In a subprocess: ExecuTorch's threadpool takes one thread count per process."""
    out = tmp_path / "lut_et.json"
    proc = _tool("--space", _space_file(tmp_path), "--img-size", 32, "--backend", "executorch", "--threads", 1,
                 "--warmup", 1, "--runs", 2, "--check", 2, "--num-classes", 3, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = LatencyTable.load(out)
    _assert_runtime_table(table, "executorch")
    check = json.loads(out.with_suffix(".check.json").read_text())
    assert check["predicted_ms"] == pytest.approx([table.predict(TINY.largest()), table.predict(TINY.smallest())])
    assert all(m > 0 for m in check["measured_ms"]) and -1 <= check["pearson_r"] <= 1
    assert "Pearson r" in proc.stdout and f"{TINY_ENTRIES} entries written" in proc.stdout


def _assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("build_latency_lut: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def test_tool_bad_input(tmp_path):
    space = _space_file(tmp_path)
    out = tmp_path / "lut.json"
    tool = "build_latency_lut"
    _assert_one_line_error(run_tool(tool, "--space", space, "--backend", "tflite", "--out", out), "tflite")
    _assert_one_line_error(run_tool(tool, "--space", tmp_path / "missing.yaml", "--out", out), "no such file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("widths: [[8]]\n")
    _assert_one_line_error(run_tool(tool, "--space", bad, "--out", out), "not a search space")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _assert_one_line_error(run_tool(tool, "--space", space, "--out", blocker / "lut.json"), "--out",
                           "cannot be written")
    assert not out.exists()


@pytest.mark.parametrize("backend", ["executorch", "openvino"])
def test_tool_runtime_not_installed(tmp_path, backend):
    out = tmp_path / "lut.json"
    proc = run_tool("build_latency_lut", "--space", _space_file(tmp_path), "--backend", backend, "--out", out,
                    hide=(backend,))
    _assert_one_line_error(proc, backend, "not installed", "make install")
    assert not out.exists()


# moved from test_search.py: the table itself (torch and ONNX Runtime backends)
def test_latency_table_round_trip(tmp_path):
    space = SearchSpace(widths=((8,), (8, 16), (16,), (16,)), depths=(1, 1, 1, 1), expansions=(2,), stem_widths=(8,))
    table = build_latency_table(space, img_size=32, threads=1, warmup=1, runs=2, num_classes=3)
    assert table.overhead_ms == 0.0  # eager PyTorch: no per-run correction
    assert set(table.entries) >= set(subnet_keys(space.largest()))
    path = table.save(tmp_path / "lut.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.predict(space.largest()) == pytest.approx(sum(table.entries[k] for k in subnet_keys(space.largest())))
    path.write_text(json.dumps({**table.to_dict(), "entries": {"stem:8-8": -1.0}}))
    with pytest.raises(ValueError, match="not non-negative"):
        LatencyTable.load(path)
    other = SearchSpace(widths=((8, 16), (16,), (16, 24), (24, 32)), depths=(1, 1, 2, 2), expansions=(2, 4),
                        stem_widths=(8,))
    with pytest.raises(KeyError, match="rebuild"):
        loaded.predict(other.largest())


def _nontrivial_init(m: nn.Module) -> None:
    """Random BatchNorm statistics and affines, layer scales and attention biases (from the global
    generator), so that folding them into the deploy form is really exercised."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
    elif isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.normal_(0, 0.1)
    elif isinstance(m, LayerScale):
        m.gamma.data.uniform_(0.5, 1.0)
    elif isinstance(m, OffsetAttentionBias):
        m.attention_biases.data.normal_(0, 0.5)


def test_lut_entries_are_the_fused_deploy_form(monkeypatch):
    """Every entry is timed as shipped: no BatchNorm or layer scale left, same outputs."""
    monkeypatch.setattr(EfficientFormerV2, "_init_weights", staticmethod(_nontrivial_init))
    space = SearchSpace(widths=((8,), (8, 16), (16,), (16,)), depths=(1, 1, 1, 1), expansions=(2,), stem_widths=(8,))
    for key, factory, shape in table_entries(space, 32, num_classes=3):
        torch.manual_seed(0)
        trainable = factory().eval()
        torch.manual_seed(0)
        fused = factory(fused=True)
        assert not any(isinstance(m, (nn.BatchNorm2d, LayerScale)) for m in fused.modules()), key
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), trainable(x), rtol=1e-4, atol=1e-5, msg=key)


def test_latency_table_onnxruntime_round_trip(tmp_path):
    space = SearchSpace(widths=((8,), (8, 16), (16,), (16,)), depths=(1, 1, 1, 1), expansions=(2,), stem_widths=(8,))
    table = build_latency_table(space, img_size=32, backend="onnxruntime", threads=1, warmup=1, runs=2, num_classes=3)
    assert table.backend == "onnxruntime" and len(table.entries) == 14
    # net of the per-run cost: a block cheaper than a pass-through graph counts 0
    assert all(0 <= ms < 100 for ms in table.entries.values()) and sum(table.entries.values()) > 0
    loaded = LatencyTable.load(table.save(tmp_path / "lut_ort.json"))
    assert loaded == table and loaded.predict(space.smallest()) > 0
    # entries are net of the runtime's fixed cost per run, which a prediction adds once
    assert 0 < table.overhead_ms < 100
    assert loaded.predict(space.smallest()) == pytest.approx(
        sum(table.entries[k] for k in subnet_keys(space.smallest())) + table.overhead_ms)
    report = evaluate_table(loaded, num_subnets=2, warmup=1, runs=2)
    assert len(report.measured_ms) == 2 and all(m > 0 for m in report.measured_ms)
    assert report.predicted_ms == [loaded.predict(space.largest()), loaded.predict(space.smallest())]
    assert -1 <= report.pearson_r <= 1 and report.mean_abs_error_ms >= 0


@pytest.mark.export
def test_lut_onnx_entries_go_through_the_shipped_exporter_with_parity(monkeypatch):
    """The table's ONNX graphs are written by the one exporter path of `--format onnx` (dynamo,
    opset 20) and compute what PyTorch does (1e-4)."""
    import onnx

    import deploy.runtimes.onnxruntime as ort_runtime
    from deploy.runtimes import backend_runtime

    written = []
    real = ort_runtime.export_onnx
    monkeypatch.setattr(ort_runtime, "export_onnx", lambda *a, **k: written.append(real(*a, **k)) or written[-1])
    key, factory, shape = next(e for e in table_entries(TINY, 32, num_classes=3) if e[0].startswith("mhsa"))
    module = factory(fused=True)
    assert measure_latency(module, shape, "onnxruntime", threads=1, warmup=0, runs=1) > 0
    assert len(written) == 1
    x = torch.randn(*shape)
    compiled = backend_runtime("onnxruntime").compile(module, x, threads=1)
    assert {o.domain: o.version for o in onnx.load(str(compiled.path)).opset_import}[""] == 20
    with torch.no_grad():
        assert float((compiled.outputs()[0] - module(x)).abs().max()) <= 1e-4, key
