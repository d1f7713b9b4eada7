"""Export of the deploy form: ONNX (parity with ONNX Runtime), CoreML (package validates),
TorchScript, at 224 and with feature maps at a non-square size; helpful errors."""
import copy
import importlib.util

import pytest
import torch

from backbones import CheckpointError, create_model, save_checkpoint
from deploy.export import ONNX_ATOL, ExportStackError, check_onnx, export_coreml, export_model
from deploy.models import FeatureTuple, ImageInput, build_model, deploy_form

S0 = "efficientformerv2_s0"
FEAT_SIZE = (160, 224)  # non-square, not the training grid
FEAT_SHAPES = [(32, 40, 56), (48, 20, 28), (96, 10, 14), (176, 5, 7)]  # S0 strides 4/8/16/32 at 160x224


def test_onnx_classifier_224(s0, tmp_path):
    res = export_model(S0, "onnx", tmp_path / "s0.onnx", model=s0)
    assert res.ok and res.path.is_file()
    assert res.max_abs_diff <= ONNX_ATOL
    import onnx
    graph = onnx.load(str(res.path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 224, 224]
    assert any(n.op_type == "Gelu" for n in graph.node)  # a single Gelu op per activation (opset 20)


def test_onnx_features_dynamic_nonsquare(s0_features, tmp_path):
    res = export_model(S0, "onnx", tmp_path / "s0_feat.onnx", model=s0_features, features=True, size=FEAT_SIZE)
    assert res.max_abs_diff <= ONNX_ATOL
    from deploy.ort import create_session
    sess = create_session(res.path)
    assert [o.name for o in sess.get_outputs()] == ["feat0", "feat1", "feat2", "feat3"]
    x = torch.rand(1, 3, *FEAT_SIZE)
    outs = sess.run(None, {"image": x.numpy()})
    assert [tuple(o.shape[1:]) for o in outs] == FEAT_SHAPES
    # symbolic height/width: a third size, square and at the training grid, also matches PyTorch
    net = ImageInput(FeatureTuple(deploy_form(s0_features))).eval()
    assert check_onnx(res.path, net, torch.rand(2, 3, 224, 224), session=sess) <= ONNX_ATOL


def test_onnx_static_graph_is_the_fused_deploy_form(s0, tmp_path):
    """The classifier graph of the benchmark: static shapes, no BatchNorm, q/k/v as separate
    convolutions (no Split: each is delegated whole by XNNPACK), the upsampling of the two
    stride attentions a native Resize, parity with PyTorch."""
    import onnx

    from deploy.export import export_onnx
    from deploy.ort import create_session
    net = deploy_form(s0)
    x = torch.randn(1, 3, 224, 224)
    path = export_onnx(net, x, tmp_path / "s0_static.onnx", dynamic_batch=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" not in ops and "Split" not in ops
    assert ops.count("Resize") == 2 and ops.count("Softmax") == 5
    optimized = tmp_path / "s0.opt.onnx"
    sess = create_session(path, threads=2, optimized_path=optimized)
    assert optimized.is_file()
    assert check_onnx(path, net, x, session=sess) <= ONNX_ATOL


def test_torchscript_classifier_and_features(s0, s0_features, tmp_path):
    res = export_model(S0, "torchscript", tmp_path / "s0.pt", model=s0)
    assert res.max_abs_diff <= 1e-5
    res = export_model(S0, "torchscript", tmp_path / "s0_feat.pt", model=s0_features, features=True, size=FEAT_SIZE)
    traced = torch.jit.load(str(res.path))
    outs = traced(torch.rand(1, 3, *FEAT_SIZE))
    assert [tuple(o.shape[1:]) for o in outs] == FEAT_SHAPES
    # the traced graph holds for other sizes too (the bias is computed for the actual grid)
    x = torch.rand(1, 3, 224, 192)
    net = ImageInput(FeatureTuple(deploy_form(s0_features))).eval()
    with torch.no_grad():
        assert max(float((a - b).abs().max()) for a, b in zip(traced(x), net(x))) <= 1e-4


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_classifier_and_features(s0, s0_features, tmp_path):
    res = export_model(S0, "coreml", tmp_path / "s0.mlpackage", model=s0)
    assert res.ok and (res.path / "Manifest.json").is_file()
    assert "conv" in res.ops and "softmax" in res.ops and "matmul" in res.ops
    import coremltools as ct
    spec = ct.utils.load_spec(str(res.path))
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    assert spec.specificationVersion >= 7  # iOS 16
    # --features: ranged input sizes by default (the traced graph is checked at three sizes first)
    res = export_model(S0, "coreml", tmp_path / "s0_feat.mlpackage", model=s0_features, features=True,
                       size=FEAT_SIZE, precision="float32")
    assert res.ok and "height 64..2048, width 64..2048" in res.checked
    spec = ct.utils.load_spec(str(res.path))
    assert [o.name for o in spec.description.output] == ["feat0", "feat1", "feat2", "feat3"]
    image = spec.description.input[0].type.imageType
    assert (image.height, image.width) == FEAT_SIZE  # the default size
    r = image.imageSizeRange
    assert (r.heightRange.lowerBound, r.heightRange.upperBound, r.widthRange.upperBound) == (64, 2048, 2048)


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_coreml_enumerated_sizes_and_bad_range(s0, tmp_path):
    res = export_model(S0, "coreml", tmp_path / "s0_enum.mlpackage", model=s0, size=(224, 224),
                       coreml_shapes=[(224, 224), (256, 320)])
    assert res.ok and "sizes 224x224, 256x320" in res.checked
    with pytest.raises(ValueError, match="must contain the example size"):
        export_model(S0, "coreml", tmp_path / "x.mlpackage", model=s0, coreml_shapes=(256, 512))
    with pytest.raises(ValueError, match="must include the example size"):
        export_model(S0, "coreml", tmp_path / "x.mlpackage", model=s0, coreml_shapes=[(256, 320)])


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
def test_coreml_flexible_sizes_refuse_a_size_specific_trace(s0_features, tmp_path):
    # the plain deploy form precomputes its biases for the training grid: its trace does not hold at
    # other sizes, which the check finds before conversion (shape_generic() is what makes it hold)
    net = FeatureTuple(deploy_form(copy.deepcopy(s0_features))).eval()
    with pytest.raises(AssertionError, match="does not hold"):
        export_coreml(net, torch.rand(1, 3, 224, 224), tmp_path / "x.mlpackage", image_input=False,
                      shapes=[(224, 224), (160, 224)])
