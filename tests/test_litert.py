"""LiteRT (`.tflite`): export and parity with PyTorch in the LiteRT interpreter (XNNPACK), feature
maps, int8 with a top-1 on a toy split, the benchmark and latency-table backend, on the tiny
architecture (S0 once); bad input through tools/export.py. Conversions take seconds each: every
file is converted once per module."""
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_ARCH
from deploy.export import EDGE_ATOL, export_model, imagenet_class_names
from deploy.models import FeatureTuple, ImageInput, deploy_form
from tool_runner import assert_one_line_error, run_tool

pytestmark = [pytest.mark.export,
              pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None
                                 or importlib.util.find_spec("ai_edge_litert") is None,
                                 reason="litert-torch / ai-edge-litert not installed")]

SIZE = (64, 64)
FEAT_SIZE = (64, 96)  # non-square
TOY_SIZE = 32


@pytest.fixture(scope="module")
def tiny1k(randomize_):
    """The tiny architecture with 1000 classes (so the export carries the ImageNet-1K names) and
    random weights, at 64 px."""
    from backbones import EfficientFormerV2
    return randomize_(EfficientFormerV2(TINY_ARCH, img_size=64)).eval()


@pytest.fixture(scope="module")
def tiny_tflite(tiny1k, tmp_path_factory):
    return export_model("tiny", "litert", tmp_path_factory.mktemp("litert") / "tiny.tflite", model=tiny1k,
                        size=SIZE)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A tiny ImageNet-layout folder: 10 classes, 3 train and 2 val images each, 32x32."""
    from classification.toy_data import make_toy_classification
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=3, val_per_class=2,
                                   size=TOY_SIZE)


# --------------------------------------------------------------------------------------------
# fp32: parity, the file's signature, class names
# --------------------------------------------------------------------------------------------
def test_classifier_matches_pytorch_in_the_interpreter(tiny_tflite, tiny1k):
    from deploy.runtimes.litert import LiteRTProgram
    res = tiny_tflite
    assert res.ok and res.path.is_file() and res.path.suffix == ".tflite" and not res.int8
    assert res.max_abs_diff <= EDGE_ATOL and "LiteRT (XNNPACK)" in res.checked and "1x3x64x64" in res.checked
    assert not list(res.path.parent.glob(".tiny.tflite.*"))  # no temporary folder left
    # reloaded on its own, against the PyTorch deploy form on a new input
    program = LiteRTProgram(res.path, threads=1)
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(5))
    (got,) = program(x)
    with torch.no_grad():
        want = ImageInput(deploy_form(tiny1k)).eval()(x)
    assert got.shape == (1, 1000) and float((got - want).abs().max()) <= EDGE_ATOL


def test_file_signature_and_xnnpack(tiny_tflite):
    """What an app sees: one float32 NCHW input `args_0` (1x3x64x64), the logits `output_0`, and
    the graph in one XNNPACK partition."""
    from deploy.runtimes.litert import LiteRTProgram
    program = LiteRTProgram(tiny_tflite.path, threads=1)
    assert program.interpreter.get_signature_list() == {"serving_default": {"inputs": ["args_0"],
                                                                            "outputs": ["output_0"]}}
    assert program.input["dtype"].__name__ == "float32" and list(program.input["shape"]) == [1, 3, *SIZE]
    assert [list(o["shape"]) for o in program.outputs] == [[1, 1000]]
    assert program.partitions == 1


def test_class_names_beside_the_file(tiny_tflite):
    labels = tiny_tflite.path.with_name("tiny.labels.txt").read_text().splitlines()
    assert labels == imagenet_class_names(1000)
    assert any("tiny.labels.txt" in line for line in tiny_tflite.details())
    assert sorted(p.name for p in tiny_tflite.path.parent.iterdir()) == ["tiny.labels.txt", "tiny.tflite"]


def test_features_in_pytorch_order_at_a_nonsquare_size(randomize_, tmp_path):
    from backbones import EfficientFormerV2
    from deploy.runtimes.litert import LiteRTProgram
    features = randomize_(EfficientFormerV2(TINY_ARCH, img_size=64, features_only=True)).eval()
    res = export_model("tiny", "litert", tmp_path / "feat.tflite", model=features, features=True, size=FEAT_SIZE)
    assert res.ok and res.max_abs_diff <= EDGE_ATOL and "1x3x64x96" in res.checked
    assert [p.name for p in tmp_path.iterdir()] == ["feat.tflite"]  # no class names for feature maps
    x = torch.rand(1, 3, *FEAT_SIZE, generator=torch.Generator().manual_seed(6))
    outs = LiteRTProgram(res.path, threads=1)(x)
    with torch.no_grad():
        want = ImageInput(FeatureTuple(deploy_form(features))).eval()(x)
    h, w = FEAT_SIZE
    assert [tuple(o.shape) for o in outs] == [(1, c, h // s, w // s) for c, s in zip(TINY_ARCH["widths"], (4, 8, 16, 32))]
    assert max(float((a - b).abs().max()) for a, b in zip(outs, want)) <= EDGE_ATOL


# --------------------------------------------------------------------------------------------
# int8 (PT2E) with its top-1 on the toy val split
# --------------------------------------------------------------------------------------------
def test_int8_reports_top1_agreement_and_cosine(randomize_, toy, tmp_path):
    from backbones import EfficientFormerV2
    from deploy.runtimes.litert import LiteRTProgram
    # random weights: near-tied logits, so the top-1 agreement is reported here, not bounded
    model = randomize_(EfficientFormerV2(TINY_ARCH, num_classes=10, img_size=64)).eval()
    res = export_model("tiny", "litert", tmp_path / "tiny_int8.tflite", model=model, size=(TOY_SIZE, TOY_SIZE),
                       int8=True, calibration=toy, calibration_count=8, min_agreement=0.0)
    assert res.ok and res.int8 and res.path.is_file()
    assert res.top1_images == 20 and res.top1_split == str(toy / "val")
    assert 0.0 <= res.top1_float <= 100.0 and 0.0 <= res.top1_exported <= 100.0
    assert 0.0 <= res.agreement <= 1.0 and 0.5 < res.cosine <= 1.0 + 1e-6 and res.max_abs_diff > 0.0
    assert any("int8" in line and "mean cosine similarity" in line for line in res.details())
    program = LiteRTProgram(res.path, threads=1)
    ops = {o["op_name"] for o in program.interpreter._get_ops_details()}
    assert "QUANTIZE" in ops or "DEQUANTIZE" in ops  # int8 arithmetic in the file
    assert program(torch.rand(1, 3, TOY_SIZE, TOY_SIZE))[0].dtype == torch.float32  # dequantized for the caller


# --------------------------------------------------------------------------------------------
# Benchmark and latency-table backend
# --------------------------------------------------------------------------------------------
def test_benchmark_backend_honours_threads(randomize_):
    from backbones import EfficientFormerV2
    from deploy.benchmark import run_benchmark
    tiny = randomize_(EfficientFormerV2(TINY_ARCH, num_classes=10, img_size=64)).eval()
    (rec,) = run_benchmark([("tiny", tiny)], ["litert"], threads=1, resolution=64, runs=3, warmup=1)
    assert rec["backend"] == "litert" and rec["precision"] == "fp32" and rec["threads"] == 1
    assert rec["latency_ms_median"] > 0 and rec["max_abs_diff"] <= EDGE_ATOL
    assert rec["litert_threads"] == 1 and rec["xnnpack_partitions"] == 1


def test_latency_table_backend(one_thread):
    from deploy import latency_lut as lut
    assert "litert" in lut.BACKENDS
    ms = lut.measure_latency(lut._PassThrough(8), (1, 8, 8, 8), "litert", threads=1, warmup=1, runs=3)
    assert ms > 0


def test_threads_rebuild_in_one_process(tiny_tflite):
    """Each interpreter has its own threadpool: another count in the same process (unlike ExecuTorch)."""
    from deploy.runtimes import backend_runtime
    x = torch.rand(1, 3, *SIZE)
    one = backend_runtime("litert").bound(tiny_tflite.path, x, 1)
    two = one.rebuild(2)
    assert one.info["litert_threads"] == 1 and two.info["litert_threads"] == 2
    assert float((one.outputs()[0] - two.outputs()[0]).abs().max()) <= EDGE_ATOL


@pytest.mark.slow
def test_s0_classifier_224(s0, tmp_path):
    res = export_model("efficientformerv2_s0", "litert", tmp_path / "s0.tflite", model=s0)
    assert res.ok and res.max_abs_diff <= EDGE_ATOL and "1x3x224x224" in res.checked
    from deploy.runtimes.litert import LiteRTProgram
    assert LiteRTProgram(res.path, threads=1).partitions == 1  # S0 in one XNNPACK partition


# --------------------------------------------------------------------------------------------
# Bad input through the command line: one line, exit status 2, nothing written
# --------------------------------------------------------------------------------------------


class _Cummax(torch.nn.Module):
    """An operator LiteRT has no lowering for (`aten.cummax`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=-1).values.mean((2, 3))


def test_cli_operator_litert_cannot_convert(monkeypatch, tmp_path):
    monkeypatch.setattr("deploy.export.build_model", lambda *args, **kwargs: _Cummax())
    out = tmp_path / "out" / "m.tflite"
    proc = run_tool("export", "--model", "cummax", "--format", "litert", "--out", out, "--size", "32", cwd=ROOT)
    assert_one_line_error(proc, "export", "LiteRT cannot convert", "aten.cummax")
    assert list(tmp_path.iterdir()) == []


def test_cli_suffix_other_than_tflite(tmp_path):
    proc = run_tool("export", "--model", "efficientformerv2_s0", "--format", "litert", "--out", tmp_path / "m.tfl",
                    cwd=ROOT)
    assert_one_line_error(proc, "export", ".tflite")
    assert list(tmp_path.iterdir()) == []


def test_cli_int8_without_calibration(tmp_path):
    proc = run_tool("export", "--model", "efficientformerv2_s0", "--format", "litert", "--out", tmp_path / "m.tflite",
                    "--int8", cwd=ROOT)
    assert_one_line_error(proc, "export", "--calibration")
    assert list(tmp_path.iterdir()) == []


def test_cli_calibration_folder_without_image(tmp_path):
    (tmp_path / "cal" / "train" / "a").mkdir(parents=True)
    (tmp_path / "cal" / "train" / "a" / "notes.txt").write_text("not an image")
    proc = run_tool("export", "--model", "efficientformerv2_s0", "--format", "litert", "--out",
                    tmp_path / "out" / "m.tflite", "--int8", "--calibration", tmp_path / "cal", cwd=ROOT)
    assert_one_line_error(proc, "export", "no image files")
    assert not (tmp_path / "out").exists()


def test_cli_runtime_not_installed(tmp_path):
    proc = run_tool("export", "--model", "efficientformerv2_s0", "--format", "litert", "--out", tmp_path / "m.tflite",
                    cwd=ROOT, hide=("litert_torch",))
    assert_one_line_error(proc, "export", "litert_torch", "install")
    assert list(tmp_path.iterdir()) == []
