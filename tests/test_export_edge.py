"""ExecuTorch (XNNPACK) and OpenVINO export: S0 parity with PyTorch at 224 and, with feature maps of
the tiny architecture (S0's block types and strides), at a non-square size; operators outside the XNNPACK delegate; int8 with a top-1 on a toy split;
calibration images; bad input through tools/export.py."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from deploy.calibration import CalibrationError, calibration_images, top1_accuracy
from deploy.export import EDGE_ATOL, export_model, graph_transform, staged_output
from deploy.models import FeatureTuple, ImageInput, build_model, deploy_form
from tool_runner import assert_one_line_error, run_tool

pytestmark = pytest.mark.export

S0 = "efficientformerv2_s0"
FEAT_SIZE = (96, 128)  # non-square and small
FEAT_SHAPES = [(16, 24, 32), (24, 12, 16), (32, 6, 8), (48, 3, 4)]  # conftest.TINY_ARCH, strides 4/8/16/32 at 96x128
TINY = "test_efficientnet"  # timm's test model: a few thousand parameters
TOY_SIZE = 32

needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="executorch not installed")
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
needs_nncf = pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A tiny ImageNet-layout folder: 10 classes, 3 train and 2 val images each, 32x32."""
    from classification.toy_data import make_toy_classification
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=3, val_per_class=2,
                                   size=TOY_SIZE)


@pytest.fixture(scope="module")
def s0_pte(s0, tmp_path_factory):
    return export_model(S0, "executorch", tmp_path_factory.mktemp("et") / "s0.pte", model=s0)


# --------------------------------------------------------------------------------------------
# ExecuTorch
# --------------------------------------------------------------------------------------------
@needs_executorch
def test_executorch_classifier_224_matches_pytorch(s0_pte):
    assert s0_pte.ok and s0_pte.path.is_file() and s0_pte.path.suffix == ".pte"
    assert s0_pte.max_abs_diff <= EDGE_ATOL
    assert "1x3x224x224" in s0_pte.checked
    assert isinstance(s0_pte.undelegated, dict)
    assert not list(s0_pte.path.parent.glob(".s0.pte.*"))  # no temporary folder left


@needs_executorch
def test_executorch_s0_fully_delegated(s0_pte):
    assert s0_pte.undelegated == {}


@needs_executorch
def test_executorch_threads_once_per_process(s0_pte):
    code = f"""
import torch
from deploy.runtimes.executorch import ExecuTorchProgram, set_threads
set_threads(1)
set_threads(1)  # the same count again: nothing to do
print(tuple(ExecuTorchProgram({str(s0_pte.path)!r})(torch.rand(1, 3, 224, 224))[0].shape))
try:
    set_threads(2)
except RuntimeError as e:
    print("refused:", e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(1, 10)" in proc.stdout and "refused: the ExecuTorch threadpool of this process already has 1" in proc.stdout


@needs_executorch
def test_executorch_features_fixed_nonsquare_size(tiny_features, tmp_path):
    from deploy.runtimes.executorch import ExecuTorchProgram
    res = export_model(S0, "executorch", tmp_path / "tiny_feat.pte", model=tiny_features, features=True,
                       size=FEAT_SIZE)
    assert res.max_abs_diff <= EDGE_ATOL
    program = ExecuTorchProgram(res.path)
    x = torch.rand(1, 3, *FEAT_SIZE)
    outs = program(x)
    assert [tuple(o.shape[1:]) for o in outs] == FEAT_SHAPES
    net = ImageInput(FeatureTuple(deploy_form(tiny_features))).eval()
    with torch.no_grad():
        assert max(float((a - b).abs().max()) for a, b in zip(outs, net(x))) <= EDGE_ATOL


@needs_executorch
def test_undelegated_operator_is_a_warning_naming_it(tmp_path):
    from deploy.runtimes.executorch import UndelegatedOperatorWarning, export_executorch

    class Cumsum(torch.nn.Module):  # no XNNPACK kernel for cumsum
        def forward(self, x):
            return torch.cumsum(x, dim=-1) * 2

    with pytest.warns(UndelegatedOperatorWarning, match="cumsum"):
        res = export_executorch(Cumsum(), torch.rand(1, 4, 8), tmp_path / "c.pte")
    assert any("cumsum" in name for name in res.undelegated)


# --------------------------------------------------------------------------------------------
# OpenVINO
# --------------------------------------------------------------------------------------------
@needs_openvino
def test_openvino_classifier_224_matches_pytorch(s0, tmp_path):
    res = export_model(S0, "openvino", tmp_path / "s0.xml", model=s0)
    assert res.ok and res.max_abs_diff <= EDGE_ATOL
    assert res.path.is_file() and res.path.with_suffix(".bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0.bin", "s0.xml"]


@needs_openvino
def test_openvino_features_dynamic_hw(tiny_features, tmp_path):
    from deploy.runtimes.openvino import compile_openvino
    res = export_model(S0, "openvino", tmp_path / "tiny_feat.xml", model=tiny_features, features=True, size=FEAT_SIZE)
    assert res.max_abs_diff <= EDGE_ATOL
    assert "1x3x133x99" in res.checked  # the other, non-square size of the check
    model = compile_openvino(res.path, threads=1)
    assert [tuple(o.shape[1:]) for o in model(torch.rand(1, 3, *FEAT_SIZE))] == FEAT_SHAPES
    # yet another size and batch, square, at the training grid
    x = torch.rand(2, 3, 64, 64)
    net = ImageInput(FeatureTuple(deploy_form(tiny_features))).eval()
    with torch.no_grad():
        assert max(float((a - b).abs().max()) for a, b in zip(model(x), net(x))) <= EDGE_ATOL


# --------------------------------------------------------------------------------------------
# int8 and calibration
# --------------------------------------------------------------------------------------------
def _unnormalised(size):
    """The evaluation transform of the tiny model at `size`, in [0, 1] (the graph normalises)."""
    return graph_transform(build_model(TINY, num_classes=10), (size, size) if isinstance(size, int) else size)


def test_calibration_images_are_preprocessed_for_the_graph(toy):
    images = calibration_images(toy, _unnormalised((TOY_SIZE, 24)), count=7)
    assert len(images) == 7 and all(x.shape == (1, 3, TOY_SIZE, 24) for x in images)
    assert all(0.0 <= float(x.min()) and float(x.max()) <= 1.0 for x in images)
    assert float(images[0].std()) > 0.01
    square = _unnormalised(TOY_SIZE)
    assert len(calibration_images(toy, square, count=1000)) == 30  # every train image, no more
    assert top1_accuracy(lambda x: torch.eye(10)[:1], toy, square) == pytest.approx(10.0)  # class 0 of 10


def test_calibration_folder_without_readable_image_is_refused(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(CalibrationError, match="none readable"):
        calibration_images(tmp_path, _unnormalised(32))
    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_images(tmp_path / "missing", _unnormalised(32))


def _int8(fmt: str, toy: Path, out: Path, min_agreement: float = 0.0):
    # random weights: near-tied logits, so the top-1 agreement is reported here, not bounded
    model = build_model(TINY, num_classes=10)
    return export_model(TINY, fmt, out, model=model, size=(TOY_SIZE, TOY_SIZE), int8=True, calibration=toy,
                        min_agreement=min_agreement)


@needs_executorch
def test_executorch_int8_reports_top1(toy, tmp_path):
    res = _int8("executorch", toy, tmp_path / "tiny_int8.pte")
    assert res.ok and res.int8 and res.path.is_file()
    assert res.top1_images == 20 and res.top1_split == str(toy / "val")
    assert 0.0 <= res.top1_float <= 100.0 and 0.0 <= res.top1_exported <= 100.0
    assert any("int8" in line and "top-1 float" in line for line in res.details())


@needs_nncf
def test_openvino_int8_reports_top1_and_bounds_agreement(toy, tmp_path):
    res = _int8("openvino", toy, tmp_path / "tiny_int8.xml")
    assert res.ok and res.int8 and res.path.with_suffix(".bin").is_file()
    assert res.top1_images == 20 and res.top1_float is not None and res.top1_exported is not None
    assert 0.0 <= res.agreement <= 1.0 and res.max_abs_diff > 0.0
    assert 0.5 < res.cosine <= 1.0 + 1e-6 and any("mean cosine similarity" in line for line in res.details())
    # an agreement bound that no export meets: the check fails and nothing is left behind
    with pytest.raises(AssertionError, match="top-1 class"):
        _int8("openvino", toy, tmp_path / "refused" / "tiny_int8.xml", min_agreement=1.01)
    assert not (tmp_path / "refused").exists()


def test_image_comparison_reports_agreement_and_mean_cosine():
    from deploy.export import compare_on_images
    module = torch.nn.Flatten()
    samples = [(torch.tensor([[[[1.0]], [[2.0]]]]), 1), (torch.tensor([[[[3.0]], [[1.0]]]]), 0)]
    same = compare_on_images(lambda x: (2 * module(x),), module, samples)  # scaled logits: cosine 1
    assert same.agreement == 1.0 and same.cosine == pytest.approx(1.0) and same.top1_exported == 100.0
    flipped = compare_on_images(lambda x: (-module(x),), module, samples)
    assert flipped.agreement == 0.0 and flipped.cosine == pytest.approx(-1.0) and flipped.top1_exported == 0.0


def test_int8_needs_calibration_and_an_int8_format(tmp_path):
    with pytest.raises(ValueError, match="--calibration"):
        export_model(S0, "executorch", tmp_path / "x.pte", int8=True)
    with pytest.raises(ValueError, match="executorch and openvino"):
        export_model(S0, "onnx", tmp_path / "x.onnx", int8=True, calibration=tmp_path)


def test_staged_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "new" / "deeper" / "m.xml"
    with pytest.raises(RuntimeError):
        with staged_output(target) as path:
            path.write_text("half")
            path.with_suffix(".bin").write_text("half")
            raise RuntimeError("check failed")
    assert list(tmp_path.iterdir()) == []
    with staged_output(target) as path:
        path.write_text("xml")
        path.with_suffix(".bin").write_text("bin")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.bin", "m.xml"]


def test_staged_output_keeps_folders_in_the_way(tmp_path):
    """A folder named like a companion file is the user's, not an old output: refused, untouched,
    and the temporary folder removed; an output folder (a CoreML package) is replaced."""
    (tmp_path / "m.bin").mkdir()
    (tmp_path / "m.bin" / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="m.bin"):
        with staged_output(tmp_path / "m.xml") as path:
            path.write_text("xml")
            path.with_suffix(".bin").write_text("bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]
    assert (tmp_path / "m.bin" / "keep.txt").read_text() == "user data"
    package = tmp_path / "m.mlpackage"
    for text in ("old", "new"):
        with staged_output(package) as path:
            path.mkdir()
            (path / "spec").write_text(text)
    assert (package / "spec").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.mlpackage"]


# --------------------------------------------------------------------------------------------
# Bad input through the command line: one line, exit status 2, nothing written
# --------------------------------------------------------------------------------------------
def _export_cli(*args: str, hide: str | None = None) -> subprocess.CompletedProcess:
    return run_tool("export", *args, cwd=ROOT, hide=(hide,) if hide else ())


def test_cli_runtime_not_installed(tmp_path):
    proc = _export_cli("--model", S0, "--format", "executorch", "--out", str(tmp_path / "m.pte"), hide="executorch")
    assert_one_line_error(proc, "export", "executorch", "install")
    assert list(tmp_path.iterdir()) == []


def test_cli_int8_without_calibration(tmp_path):
    proc = _export_cli("--model", S0, "--format", "openvino", "--out", str(tmp_path / "m.xml"), "--int8")
    assert_one_line_error(proc, "export", "--calibration")


def test_cli_calibration_without_readable_image(tmp_path):
    (tmp_path / "cal" / "train" / "a").mkdir(parents=True)
    (tmp_path / "cal" / "train" / "a" / "x.JPEG").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out" / "m.pte"
    proc = _export_cli("--model", S0, "--format", "executorch", "--out", str(out), "--int8",
                       "--calibration", str(tmp_path / "cal"))
    assert_one_line_error(proc, "export", "none readable")
    assert not (tmp_path / "out").exists()


def test_cli_output_path_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    proc = _export_cli("--model", S0, "--format", "openvino", "--out", str(tmp_path / "file" / "m.xml"))
    assert_one_line_error(proc, "export", "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_missing_checkpoint(tmp_path):
    proc = _export_cli("--model", S0, "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                       "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert_one_line_error(proc, "export", "missing.safetensors", "does not exist")
    assert list(tmp_path.iterdir()) == []
