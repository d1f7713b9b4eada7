"""The official release's dense backbones (snap-research/EfficientFormer `detection/backbonev2.py`
and `segmentation/backbonev2.py`) as the backbone's "dense" attention-bias mode: features equal to
the official code's on the same weights (the fixture in tests/fixtures/official_dense, made by
running that code once on a tiny variant: its README), the mode taken from the checkpoint in every
loading path (backbones.load_checkpoint, the OpenMMLab backbone's own loading under its prefix:
init_cfg, mmengine's load_checkpoint, DetInferencer / MMSegInferencer, tools/mm_test.py), a whole
official detector converted by tools/convert_checkpoint.py, and a dense checkpoint that does not
fit the model refused before a run (one line, exit 2, nothing written)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backbones import EfficientFormerV2, load_checkpoint, save_checkpoint
from backbones.dense_bias import DenseAttentionBias, bias_mode, set_bias_mode
from backbones.layers import OffsetAttentionBias

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/official_dense"
# the fixture's variant (its README): official layers [1, 1, 2, 2], embed_dims 8, vit_num 1
ARCH = {"widths": [8, 8, 8, 8], "expansions": [[2], [2], [2, 3], [3, 2]], "attention": [0, 0, 1, 1]}
RESOLUTION = {"det": 800, "seg": 512}

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture(flavour: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]]]:
    """(official-layout weights in float32, inputs, the official code's four feature maps per input)."""
    det = load_file(FIXTURES / "official_det_tiny.safetensors")
    tensors = det if flavour == "det" else load_file(FIXTURES / "official_seg_tiny.safetensors")
    weights = {k[len("weights."):]: v.float() if v.is_floating_point() else v
               for k, v in det.items() if k.startswith("weights.")}
    if flavour == "seg":  # the same weights with the segmentation file's own dense tables
        weights.update({k[len("weights."):]: v.float() for k, v in tensors.items() if k.startswith("weights.")})
    inputs = [tensors[f"input.{i}"].float() for i in range(2)]
    outputs = [[tensors[f"output.{i}.{j}"] for j in range(4)] for i in range(2)]
    return weights, inputs, outputs


def _max_diff(model: torch.nn.Module, inputs, outputs) -> float:
    model.eval()
    with torch.no_grad():
        return max(float((o - r).abs().max()) for x, ref in zip(inputs, outputs) for o, r in zip(model(x), ref))


# --------------------------------------------------------------------------------------------
# The dense mode against the official code
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["det", "seg"])
def test_dense_mode_equals_the_official_code(flavour):
    weights, inputs, outputs = _fixture(flavour)
    model = EfficientFormerV2(ARCH, features_only=True)  # the default mode; the checkpoint switches it
    assert bias_mode(model) == "offset"
    report = load_checkpoint(model, weights)
    assert report.ok and report.source_format == "official"
    assert bias_mode(model) == "dense" and model.img_size == RESOLUTION[flavour]
    assert _max_diff(model, inputs, outputs) <= 1e-4
    # the tables are visible in the outputs: without them the features are not the official ones
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DenseAttentionBias):
                m.attention_biases_seg.zero_()
    assert _max_diff(model, inputs, outputs) > 1e-3


def test_dense_mode_by_option_and_in_the_projects_layout(tmp_path):
    weights, inputs, outputs = _fixture("det")
    weights["network.4.1.token_mixer.attention_bias_idxs_seg"] = torch.zeros(625, 625, dtype=torch.long)
    model = EfficientFormerV2(ARCH, features_only=True, bias_mode="dense", img_size=800)
    assert isinstance(model.stages[3].downsample.attn.pos_bias, DenseAttentionBias)
    assert tuple(model.stages[3].downsample.attn.pos_bias.attention_biases_seg.shape) == (8, 50 * 50)
    load_checkpoint(model, weights)  # the derived index buffers and the unused ImageNet tables dropped
    saved = save_checkpoint(model, tmp_path / "dense.safetensors")
    assert any(k.endswith("pos_bias.attention_biases_seg") for k in load_file(saved))
    again = EfficientFormerV2(ARCH, features_only=True)
    load_checkpoint(again, saved)
    assert bias_mode(again) == "dense" and _max_diff(again, inputs, outputs) <= 1e-4
    assert _max_diff(again.fuse(), inputs, outputs) <= 1e-4  # the deploy form


def test_convert_checkpoint_writes_an_official_dense_backbone_in_the_projects_layout(tmp_path):
    from tool_runner import run_tool

    weights, inputs, outputs = _fixture("seg")
    save_file(weights, tmp_path / "official.safetensors")
    out = run_tool("convert_checkpoint", tmp_path / "official.safetensors", tmp_path / "ours.safetensors")
    assert out.returncode == 0 and "img_size 512" in out.stdout, out.stderr
    model = EfficientFormerV2(ARCH, features_only=True)
    load_checkpoint(model, tmp_path / "ours.safetensors")
    assert bias_mode(model) == "dense" and _max_diff(model, inputs, outputs) <= 1e-4


def test_offset_mode_stays_the_default_and_dense_keeps_zero_tables_from_imagenet_weights():
    offset = EfficientFormerV2(ARCH, features_only=True)
    assert all(isinstance(m.pos_bias, OffsetAttentionBias) for m in offset.modules() if hasattr(m, "pos_bias"))
    imagenet = {k: v for k, v in offset.state_dict().items()}
    dense = EfficientFormerV2(ARCH, features_only=True, bias_mode="dense", img_size=512)
    report = load_checkpoint(dense, imagenet, keep_dense_bias=True)  # the official recipe
    assert bias_mode(dense) == "dense" and len(report.skipped) == 3
    assert all(float(m.attention_biases_seg.detach().abs().max()) == 0 for m in dense.modules()
               if isinstance(m, DenseAttentionBias))
    load_checkpoint(dense, imagenet)  # a whole backbone of the other mode: the model takes its mode
    assert bias_mode(dense) == "offset"


def test_a_mode_switch_keeps_the_parameters_an_optimizer_holds():
    model = EfficientFormerV2(ARCH, features_only=True)
    optimizer = torch.optim.AdamW(model.parameters())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    set_bias_mode(model, "dense", 800)
    tables = [m.attention_biases_seg for m in model.modules() if isinstance(m, DenseAttentionBias)]
    assert len(tables) == 3 and all(id(t) in held for t in tables)
    assert {id(p) for p in model.parameters()} == held


# --------------------------------------------------------------------------------------------
# OpenMMLab: every loading path, the inferencers, the tools
# --------------------------------------------------------------------------------------------
mm = pytest.mark.mm


def _mm():
    pytest.importorskip("mmdet")
    pytest.importorskip("mmseg")


TINY_NECK = 16


def _det_config(tmp_path: Path, arch=ARCH, num_classes: int = 3, name: str = "det.py") -> Path:
    path = tmp_path / name
    path.write_text(f"""_base_ = '{ROOT}/configs/detection/mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py'
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{arch!r}), img_size=224, init_cfg=None),
    neck=dict(in_channels={[w for w in arch['widths']]!r}, out_channels={TINY_NECK}),
    rpn_head=dict(in_channels={TINY_NECK}, feat_channels={TINY_NECK}),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels={TINY_NECK}),
        bbox_head=dict(in_channels={TINY_NECK}, fc_out_channels=32, num_classes={num_classes}),
        mask_roi_extractor=dict(out_channels={TINY_NECK}),
        mask_head=dict(in_channels={TINY_NECK}, conv_out_channels={TINY_NECK}, num_classes={num_classes})))
""")
    return path


def _seg_config(tmp_path: Path) -> Path:
    path = tmp_path / "seg.py"
    path.write_text(f"""_base_ = '{ROOT}/configs/segmentation/fpn_efficientformerv2-s0_ade20k-toy.py'
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{ARCH!r}), img_size=224, init_cfg=None),
    neck=dict(in_channels={ARCH['widths']!r}, out_channels={TINY_NECK}),
    decode_head=dict(in_channels=[{TINY_NECK}] * 4, channels={TINY_NECK}))
""")
    return path


def _build(config: Path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _official_model_file(model: torch.nn.Module, weights: dict, path: Path, classes=None) -> Path:
    """A whole detector or segmentor as the official release saves it (mmdet 2 / mmseg 0.x): the
    backbone in the official layout (the fixture's), the other parts the model's, meta.CLASSES."""
    sd = {f"backbone.{k}": v for k, v in weights.items()}
    sd.update({k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")})
    meta = {"CLASSES": tuple(classes)} if classes else {}
    torch.save({"meta": meta, "state_dict": sd}, path)
    return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    _mm()
    from detection.toy_data import make_toy_coco
    return make_toy_coco(tmp_path_factory.mktemp("coco"), sizes={"train": 2, "val": 2})


@pytest.fixture(scope="module")
def dense_files(tmp_path_factory, coco):
    """Tiny detector and segmentor configs, their official-layout files (the fixture's backbone),
    and those files converted by tools/convert_checkpoint.py."""
    from tool_runner import run_tool

    tmp = tmp_path_factory.mktemp("dense")
    det_cfg, seg_cfg = _det_config(tmp), _seg_config(tmp)
    files = {"det_cfg": det_cfg, "seg_cfg": seg_cfg}
    for task, cfg, flavour, classes in (("det", det_cfg, "det", ("circle", "square", "triangle")),
                                        ("seg", seg_cfg, "seg", None)):
        official = _official_model_file(_build(cfg), _fixture(flavour)[0], tmp / f"official_{task}.pth", classes)
        converted = tmp / f"converted_{task}.pth"
        out = run_tool("convert_checkpoint", official, converted)
        assert out.returncode == 0, out.stderr
        assert "official detector/segmentor" in out.stdout and "dense attention bias" in out.stdout
        files[task], files[f"{task}_converted"] = official, converted
    return files


@mm
def test_backbone_converts_under_its_prefix_in_every_loading_path(tmp_path):
    _mm()
    from mmengine.runner import load_checkpoint as mm_load_checkpoint

    from openmmlab import EfficientFormerV2 as Backbone

    weights, inputs, outputs = _fixture("det")

    class Detector(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.backbone = Backbone(arch=ARCH, **kwargs)

        def forward(self, x):
            return self.backbone(x)

    official = {f"backbone.{k}": v for k, v in weights.items()}
    model = Detector()
    model.load_state_dict(official, strict=True)  # torch's own loader
    assert model.backbone.bias_mode == "dense" and _max_diff(model, inputs, outputs) <= 1e-4

    path = tmp_path / "detector.pth"
    torch.save({"meta": {}, "state_dict": official}, path)
    model = Detector()
    mm_load_checkpoint(model, str(path), strict=True)  # mmengine's (load_from, resume, inferencers)
    assert _max_diff(model, inputs, outputs) <= 1e-4

    backbone_file = tmp_path / "official_backbone.safetensors"
    save_file(weights, backbone_file)
    model = Detector(init_cfg=dict(type="Pretrained", checkpoint=str(backbone_file)))
    model.backbone.init_weights()  # init_cfg
    assert model.backbone.bias_mode == "dense" and _max_diff(model, inputs, outputs) <= 1e-4
    model = Detector(init_cfg=dict(type="Pretrained", checkpoint=str(path)))  # a whole detector's backbone
    model.backbone.init_weights()
    assert _max_diff(model, inputs, outputs) <= 1e-4


@mm
def test_inferencers_predict_the_same_from_the_official_and_the_converted_file(dense_files, coco):
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    image = str(sorted((coco / "val2017").glob("*.jpg"))[0])
    preds, metas = [], []
    for weights in (dense_files["det"], dense_files["det_converted"]):
        det = DetInferencer(model=str(dense_files["det_cfg"]), weights=str(weights), device="cpu", show_progress=False)
        assert det.model.backbone.bias_mode == "dense"
        preds.append(det(image, return_datasamples=True)["predictions"][0].pred_instances)
        metas.append(det.model.dataset_meta["classes"])
    assert list(metas[0]) == list(metas[1]) == ["circle", "square", "triangle"]  # CLASSES of the file
    assert len(preds[0]) == len(preds[1]) > 0
    torch.testing.assert_close(preds[0].bboxes, preds[1].bboxes)
    torch.testing.assert_close(preds[0].scores, preds[1].scores)
    seg = []
    for weights in (dense_files["seg"], dense_files["seg_converted"]):
        inferencer = MMSegInferencer(model=str(dense_files["seg_cfg"]), weights=str(weights), device="cpu")
        seg.append(inferencer(image, return_datasamples=True).seg_logits.data)
    torch.testing.assert_close(seg[0], seg[1])


@mm
def test_mm_test_evaluates_the_official_file_as_the_converted_one(dense_files, coco, tmp_path):
    from openmmlab.runner import test as mm_test

    metrics = [mm_test(dense_files["det_cfg"], dense_files[key], tmp_path / key, data_root=coco)
               for key in ("det", "det_converted")]
    assert metrics[0] == metrics[1] and "coco/bbox_mAP" in metrics[0]


def _refused(tool: str, *args, work_dir: Path) -> str:
    from tool_runner import assert_one_line_error, run_tool

    out = run_tool(tool, *args, "--work-dir", work_dir)
    line = assert_one_line_error(out, tool)
    assert not work_dir.exists(), "a refused run wrote into its work dir"
    return line


@mm
def test_a_dense_checkpoint_that_does_not_fit_is_refused_before_the_run(dense_files, coco, tmp_path):
    det_cfg = dense_files["det_cfg"]
    work = tmp_path / "work"
    # an official detector of another variant than the config's
    other = _det_config(tmp_path, arch=dict(ARCH, widths=[8, 8, 16, 16]), name="other.py")
    line = _refused("mm_test", other, dense_files["det"], "--data-root", coco, work_dir=work)
    assert "its backbone is a custom architecture (widths [8, 8, 8, 8]" in line and "widths [8, 8, 16, 16]" in line
    # truncated and damaged files
    data = dense_files["det"].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    _refused("mm_test", det_cfg, tmp_path / "truncated.pth", "--data-root", coco, work_dir=work)
    sd = torch.load(dense_files["det"], weights_only=True)
    sd["state_dict"] = {k: v for k, v in sd["state_dict"].items() if "network.6." not in k}
    torch.save(sd, tmp_path / "incomplete.pth")
    line = _refused("mm_test", det_cfg, tmp_path / "incomplete.pth", "--data-root", coco, work_dir=work)
    assert "backbone" in line and "missing from the file" in line and "incomplete" in line
    # an 80-class detector on the 3-class data without --classes-from-data
    coco80 = _official_model_file(_build(_det_config(tmp_path, num_classes=80, name="c80.py")), _fixture("det")[0],
                                  tmp_path / "coco80.pth", classes=[f"c{i}" for i in range(80)])
    line = _refused("mm_test", det_cfg, coco80, "--data-root", coco, work_dir=work)
    assert "its heads are for 80 classes (c0, c1" in line and "the config's for 3" in line
    assert "--classes-from-data" in line and "init_cfg" in line
    # a segmentor's file given to a detection config, also as load_from and to resume a training
    line = _refused("mm_test", det_cfg, dense_files["seg"], "--data-root", coco, work_dir=work)
    assert "unexpected decode_head" in line and "roi_head" in line and "another model's checkpoint" in line
    _refused("mm_train", det_cfg, "--data-root", coco, "--cfg-options", f"load_from={dense_files['seg']}",
             work_dir=work)
    _refused("mm_train", det_cfg, "--data-root", coco, "--resume", dense_files["seg"], work_dir=work)
    # a classification (backbone-only) file: init_cfg is the way
    cls = save_checkpoint(EfficientFormerV2(ARCH, num_classes=5), tmp_path / "cls.pth")
    line = _refused("mm_test", det_cfg, cls, "--data-root", coco, work_dir=work)
    assert "classification (backbone-only) checkpoint" in line and "model.backbone.init_cfg" in line


@mm
def test_fit_check_names_the_variant_of_an_official_file_and_its_config(official_layout):
    pytest.importorskip("mmengine")
    from openmmlab import EfficientFormerV2 as Backbone
    from openmmlab.checkpoint_check import CheckpointMismatch, check_checkpoint_fits

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone(arch="s0")
            self.neck = torch.nn.Conv2d(176, 4, 1)

    model = Detector()
    s2 = EfficientFormerV2("s2", features_only=True).state_dict()
    sd = {f"backbone.{k}": v for k, v in official_layout(s2).items()}
    sd.update({k: v for k, v in model.state_dict().items() if k.startswith("neck.")})
    config = ROOT / "configs/detection/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py"
    with pytest.raises(CheckpointMismatch) as err:
        check_checkpoint_fits(model, {"state_dict": sd}, "s2.pth", str(config))
    assert "its backbone is efficientformerv2_s2 but the config's is efficientformerv2_s0" in str(err.value)
    assert "mask-rcnn_efficientformerv2-s2_fpn_1x_coco.py" in str(err.value) and "arch='s2'" in str(err.value)
