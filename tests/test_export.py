"""Export of the deploy form: ONNX (parity with ONNX Runtime), CoreML (package validates),
TorchScript, S0 at 224 and, with feature maps, the tiny architecture at a non-square size; helpful
errors."""
import copy
import importlib.util

import pytest
import torch

from backbones import CheckpointError, create_model, save_checkpoint
from deploy.export import ONNX_ATOL, ExportStackError, check_onnx, export_coreml, export_model
from deploy.models import FeatureTuple, ImageInput, build_model, deploy_form

S0 = "efficientformerv2_s0"
FEAT_SIZE = (160, 224)  # non-square, not the training grid
# S0 is converted once per format (its classifier at 224); feature maps, sizes and options are
# checked on the tiny architecture (conftest.TINY_ARCH), whose strides are S0's
TINY_FEAT_SHAPES = [(16, 40, 56), (24, 20, 28), (32, 10, 14), (48, 5, 7)]  # strides 4/8/16/32 at 160x224


def test_onnx_classifier_224(s0, tmp_path):
    res = export_model(S0, "onnx", tmp_path / "s0.onnx", model=s0)
    assert res.ok and res.path.is_file()
    assert res.max_abs_diff <= ONNX_ATOL
    import onnx
    graph = onnx.load(str(res.path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 224, 224]
    assert any(n.op_type == "Gelu" for n in graph.node)  # a single Gelu op per activation (opset 20)


def test_onnx_features_dynamic_nonsquare(tiny_features, tmp_path):
    res = export_model(S0, "onnx", tmp_path / "tiny_feat.onnx", model=tiny_features, features=True, size=FEAT_SIZE)
    assert res.max_abs_diff <= ONNX_ATOL
    from deploy.runtimes.onnxruntime import create_session
    sess = create_session(res.path)
    assert [o.name for o in sess.get_outputs()] == ["feat0", "feat1", "feat2", "feat3"]
    x = torch.rand(1, 3, *FEAT_SIZE)
    outs = sess.run(None, {"image": x.numpy()})
    assert [tuple(o.shape[1:]) for o in outs] == TINY_FEAT_SHAPES
    # symbolic height/width: a third size, square and at the training grid, also matches PyTorch
    net = ImageInput(FeatureTuple(deploy_form(tiny_features))).eval()
    assert check_onnx(res.path, net, torch.rand(2, 3, 64, 64), session=sess) <= ONNX_ATOL


def test_onnx_static_graph_is_the_fused_deploy_form(tiny, tmp_path):
    """The classifier graph of the benchmark (the tiny architecture: S0's block types): static
    shapes, no BatchNorm, q/k/v as separate convolutions (no Split: each is delegated whole by
    XNNPACK), the upsampling of the one stride attention a native Resize, one Softmax per
    attention (stage 3, stage 4, the downsampling into stage 4), parity with PyTorch."""
    import onnx

    from deploy.export import export_onnx
    from deploy.runtimes.onnxruntime import create_session
    net = deploy_form(tiny)
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(net, x, tmp_path / "tiny_static.onnx", dynamic_batch=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" not in ops and "Split" not in ops
    assert ops.count("Resize") == 1 and ops.count("Softmax") == 3
    optimized = tmp_path / "tiny.opt.onnx"
    sess = create_session(path, threads=2, optimized_path=optimized)
    assert optimized.is_file()
    assert check_onnx(path, net, x, session=sess) <= ONNX_ATOL


def test_torchscript_classifier_and_features(s0, tiny_features, tmp_path):
    res = export_model(S0, "torchscript", tmp_path / "s0.pt", model=s0)
    assert res.max_abs_diff <= 1e-5
    res = export_model(S0, "torchscript", tmp_path / "tiny_feat.pt", model=tiny_features, features=True,
                       size=FEAT_SIZE)
    traced = torch.jit.load(str(res.path))
    outs = traced(torch.rand(1, 3, *FEAT_SIZE))
    assert [tuple(o.shape[1:]) for o in outs] == TINY_FEAT_SHAPES
    # the traced graph holds for other sizes too (the bias is computed for the actual grid)
    x = torch.rand(1, 3, 224, 192)
    net = ImageInput(FeatureTuple(deploy_form(tiny_features))).eval()
    with torch.no_grad():
        assert max(float((a - b).abs().max()) for a, b in zip(traced(x), net(x))) <= 1e-4


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_classifier_and_features(s0, tiny_features, tmp_path):
    """S0's classifier (its one CoreML conversion in-process; tools/export.py converts its feature
    maps below), and a ranged feature package of the tiny architecture."""
    res = export_model(S0, "coreml", tmp_path / "s0.mlpackage", model=s0)
    assert res.ok and (res.path / "Manifest.json").is_file()
    assert "conv" in res.ops and "softmax" in res.ops and "matmul" in res.ops
    import coremltools as ct
    spec = ct.utils.load_spec(str(res.path))
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    assert spec.specificationVersion >= 7  # iOS 16
    # --features: ranged input sizes by default (the traced graph is checked at three sizes first)
    res = export_model(S0, "coreml", tmp_path / "tiny_feat.mlpackage", model=tiny_features, features=True,
                       size=FEAT_SIZE, precision="float32")
    assert res.ok and "height 64..2048, width 64..2048" in res.checked
    spec = ct.utils.load_spec(str(res.path))
    assert [o.name for o in spec.description.output] == ["feat0", "feat1", "feat2", "feat3"]
    image = spec.description.input[0].type.imageType
    assert (image.height, image.width) == FEAT_SIZE  # the default size
    r = image.imageSizeRange
    assert (r.heightRange.lowerBound, r.heightRange.upperBound, r.widthRange.upperBound) == (64, 2048, 2048)


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_enumerated_sizes_and_bad_range(tiny, tmp_path):
    res = export_model(S0, "coreml", tmp_path / "tiny_enum.mlpackage", model=tiny, size=(64, 64),
                       coreml_shapes=[(64, 64), (96, 128)])
    assert res.ok and "sizes 64x64, 96x128" in res.checked
    with pytest.raises(ValueError, match="must contain the example size"):
        export_model(S0, "coreml", tmp_path / "x.mlpackage", model=tiny, size=(64, 64), coreml_shapes=(96, 512))
    with pytest.raises(ValueError, match="must include the example size"):
        export_model(S0, "coreml", tmp_path / "x.mlpackage", model=tiny, size=(64, 64), coreml_shapes=[(96, 128)])


def test_unknown_model_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="efficientformerv2_s0"):
        build_model("efficientformerv2_s00")


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = save_checkpoint(create_model("efficientformerv2_s1", num_classes=10), tmp_path / "s1.safetensors")
    with pytest.raises(CheckpointError, match="efficientformerv2_s1"):
        export_model(S0, "torchscript", tmp_path / "x.pt", checkpoint=path)


def test_checkpoint_class_count_and_training_size_are_taken_from_the_file(tmp_path):
    path = save_checkpoint(create_model(S0, num_classes=7, img_size=64), tmp_path / "s0.safetensors")
    model = build_model(S0, path)
    assert model.head.out_features == 7 and model.img_size == 64


def test_missing_export_stack_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "coremltools" else real(name, *a))
    with pytest.raises(ExportStackError, match="make install"):
        export_model(S0, "coreml", tmp_path / "x.mlpackage")


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_flexible_sizes_refuse_a_size_specific_trace(tiny_features, tmp_path):
    # the plain deploy form precomputes its biases for the training grid: its trace does not hold at
    # other sizes, which the check finds before conversion (shape_generic() is what makes it hold)
    net = FeatureTuple(deploy_form(copy.deepcopy(tiny_features))).eval()
    with pytest.raises(AssertionError, match="does not hold"):
        export_coreml(net, torch.rand(1, 3, 64, 64), tmp_path / "x.mlpackage", image_input=False,
                      shapes=[(64, 64), (160, 224)])


# --------------------------------------------------------------------------------------------
# The runtime registry: one module per runtime, names listed once, no torch to list them
# --------------------------------------------------------------------------------------------
def test_registry_lists_every_runtime_once_without_importing_torch():
    import subprocess
    import sys

    from conftest import ROOT
    code = ("import sys; import deploy.runtimes as r; print(r.FORMATS); print(r.BACKENDS); "
            "print(r.LUT_BACKENDS); print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    formats, backends, lut_backends, torch_loaded = proc.stdout.splitlines()
    assert torch_loaded == "False"   # the tools' --help lists the names without loading torch
    assert eval(formats) == ("onnx", "coreml", "torchscript", "executorch", "openvino", "litert", "pt2",
                              "aoti")
    assert eval(backends) == ("torch", "compile", "onnxruntime", "tensorrt", "executorch", "openvino", "litert",
                               "aoti")
    assert eval(lut_backends) == ("torch", "onnxruntime", "executorch", "openvino", "litert")
    from deploy.runtimes import RUNTIMES, format_runtime
    assert all(r.suffix for r in RUNTIMES.values() if r.format)
    assert format_runtime("onnx").backend == "onnxruntime" and format_runtime("aoti").backend == "aoti"
    with pytest.raises(ValueError, match="pt2"):
        format_runtime("tflite")


# --------------------------------------------------------------------------------------------
# torch.export for servers: pt2 (ExportedProgram) and aoti (AOTInductor package)
# --------------------------------------------------------------------------------------------
SMALL = (64, 64)


def test_pt2_classifier_and_features_reload_and_match(s0, tiny_features, tmp_path):
    res = export_model(S0, "pt2", tmp_path / "s0.pt2", model=s0, size=SMALL)
    assert res.ok and res.max_abs_diff <= ONNX_ATOL
    assert "1x3x64x64" in res.checked and "2x3x64x64" in res.checked  # symbolic batch checked
    assert not (tmp_path / "s0.labels.txt").exists()                   # 10 classes: no ImageNet names
    program = torch.export.load(str(res.path)).module()
    x = torch.rand(3, 3, *SMALL)
    net = ImageInput(deploy_form(s0)).eval()
    with torch.no_grad():
        assert float((program(x) - net(x)).abs().max()) <= ONNX_ATOL
    # --features: symbolic height and width too
    res = export_model(S0, "pt2", tmp_path / "tiny_feat.pt2", model=tiny_features, features=True, size=(64, 96))
    assert res.max_abs_diff <= ONNX_ATOL and "1x3x101x67" in res.checked  # the other, non-square size
    program = torch.export.load(str(res.path)).module()
    net = ImageInput(FeatureTuple(deploy_form(tiny_features))).eval()
    x = torch.rand(2, 3, *FEAT_SIZE)
    with torch.no_grad():
        outs = program(x)
        assert [tuple(o.shape[1:]) for o in outs] == TINY_FEAT_SHAPES
        assert max(float((a - b).abs().max()) for a, b in zip(outs, net(x))) <= ONNX_ATOL


@pytest.mark.slow
def test_aoti_package_export_and_benchmark_backend(tiny, tmp_path):
    """AOTInductor compiles C++: one test, the tiny architecture at 64 px (the export with a
    symbolic batch, and the benchmark's fixed-shape package)."""
    from deploy.benchmark import run_benchmark
    res = export_model(S0, "aoti", tmp_path / "tiny_aoti.pt2", model=tiny, size=SMALL)
    assert res.ok and res.max_abs_diff <= ONNX_ATOL and "2x3x64x64" in res.checked
    compiled = torch._inductor.aoti_load_package(str(res.path))
    x = torch.rand(3, 3, *SMALL)
    net = ImageInput(deploy_form(tiny)).eval()
    with torch.inference_mode():
        assert float((compiled(x) - net(x)).abs().max()) <= ONNX_ATOL
    (rec,) = run_benchmark([("tiny", tiny)], ["aoti"], threads=1, resolution=64, runs=2, warmup=1)
    assert rec["backend"] == "aoti" and rec["latency_ms_median"] > 0 and rec["max_abs_diff"] <= ONNX_ATOL


# --------------------------------------------------------------------------------------------
# Class names beside exports (ImageNet-1K for 1000 classes only)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_in1k():
    """The names follow the class count only: the tiny architecture with 1000 classes at 64 px."""
    from backbones import EfficientFormerV2
    from conftest import TINY_ARCH
    return EfficientFormerV2(TINY_ARCH, img_size=64).eval()   # 1000 classes


def test_labels_file_beside_a_1000_class_export(tiny_in1k, tmp_path):
    from backbones import EfficientFormerV2
    from conftest import TINY_ARCH
    from deploy.export import imagenet_class_names
    res = export_model(S0, "pt2", tmp_path / "in1k.pt2", model=tiny_in1k, size=SMALL)
    labels = (tmp_path / "in1k.labels.txt").read_text().splitlines()
    assert labels == imagenet_class_names(1000) and len(labels) == 1000
    assert labels[0].startswith("tench") and labels[999].startswith("toilet tissue")
    assert any("in1k.labels.txt" in line and "1000" in line for line in res.details())
    assert imagenet_class_names(10) is None and imagenet_class_names(1001) is None
    # feature maps have no classes: no names
    features = EfficientFormerV2(TINY_ARCH, img_size=64, features_only=True).eval()
    export_model(S0, "pt2", tmp_path / "feat.pt2", model=features, features=True, size=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feat.pt2", "in1k.labels.txt", "in1k.pt2"]


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_1000_classes_is_a_classifier_with_imagenet_names(tiny_in1k, tiny, tmp_path):
    import coremltools as ct

    from deploy.export import imagenet_class_names
    res = export_model(S0, "coreml", tmp_path / "in1k.mlpackage", model=tiny_in1k, size=SMALL)
    assert res.ok and "1000 class labels" in res.checked
    spec = ct.utils.load_spec(str(res.path))
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"   # name -> softmax probability
    assert sorted(o.name for o in spec.description.output) == ["classLabel", "classLabel_probs"]
    from deploy.runtimes.coreml import class_labels
    assert class_labels(spec) == imagenet_class_names(1000)
    assert [p.name for p in tmp_path.iterdir()] == ["in1k.mlpackage"]   # no labels file: they are inside
    # another class count: a plain model, no ImageNet names
    res = export_model(S0, "coreml", tmp_path / "ten.mlpackage", model=tiny, size=SMALL)
    spec = ct.utils.load_spec(str(res.path))
    assert spec.description.predictedFeatureName == "" and class_labels(spec) == []
    assert [o.name for o in spec.description.output] == ["logits"]


# --------------------------------------------------------------------------------------------
# Third-party noise kept out of the normal output (--verbose shows it)
# --------------------------------------------------------------------------------------------
def test_quiet_swallows_python_native_warnings_and_logs_unless_verbose(capfd):
    import logging
    import os
    import warnings

    from deploy.quiet import quiet

    def noise():
        print("python print")
        os.write(1, b"native stdout\n")
        os.write(2, b"native stderr\n")
        warnings.warn("a third-party warning")
        logging.getLogger("thirdparty").warning("a third-party log line")

    with quiet():
        noise()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    with pytest.raises(RuntimeError, match="passes through"):
        with quiet():
            raise RuntimeError("passes through")
    print("after")   # the streams are back
    assert capfd.readouterr().out == "after\n"
    with quiet(verbose=True), pytest.warns(UserWarning, match="third-party warning"):
        noise()
    out, err = capfd.readouterr()
    assert "python print" in out and "native stdout" in out and "native stderr" in err


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_features_export_prints_only_its_own_lines(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    out = tmp_path / "feat.mlpackage"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/export.py"), "--model", S0, "--format", "coreml",
                           "--features", "--size", "64", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""                              # no progress bars, warnings or native logs
    lines = proc.stdout.splitlines()  # its threads, its progress, the operator count, the check
    assert [line.split(":")[0] for line in lines] == ["threads", "export", "coreml ops", "coreml"], lines
    assert "ok" in lines[-1] and (out / "Manifest.json").is_file()
