"""The EfficientFormerV2 backbone in MMDetection: registry, shapes, freezing, pretrained init,
and a real Mask R-CNN train/evaluate/resume round on toy COCO data through mmengine's Runner."""
import math
from pathlib import Path

import pytest
import timm
import torch
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from backbones import CheckpointError, efficientformerv2_s0, save_checkpoint
from detection import EfficientFormerV2
from detection.engine import test as mm_test
from detection.engine import train as mm_train
from detection.toy_data import make_toy_coco
from test_checkpoint import official_layout

ROOT = Path(__file__).resolve().parents[1]
DET = ROOT / "configs" / "detection"
WIDTHS = {"s0": [32, 48, 96, 176], "s1": [32, 48, 120, 224], "s2": [32, 64, 144, 288], "l": [40, 80, 192, 384]}


def _down(n: int, times: int) -> int:
    for _ in range(times):
        n = (n - 1) // 2 + 1  # 3x3 stride-2 convolution, padding 1
    return n


@pytest.mark.parametrize("variant", sorted(WIDTHS))
def test_configs_build_from_the_mmdet_registry(variant):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(DET / f"mask-rcnn_efficientformerv2-{variant}_fpn_1x_coco.py"))
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=2e-4, weight_decay=0.05)
    assert cfg.train_cfg.max_epochs == 12 and cfg.model.neck.in_channels == WIDTHS[variant]
    assert (cfg.model.neck.out_channels, cfg.model.neck.num_outs) == (256, 5)
    assert cfg.train_pipeline[2]["scale"] == (1333, 800)
    model = MODELS.build(cfg.model if variant == "s0" else cfg.model.backbone)  # one full detector is enough
    backbone = model.backbone if variant == "s0" else model
    assert isinstance(backbone, EfficientFormerV2) and backbone.widths == WIDTHS[variant] and backbone.norm_eval
    assert variant != "s0" or type(model).__name__ == "MaskRCNN"


@pytest.mark.parametrize("size", [(800, 1333), (97, 203)])
def test_feature_shapes_and_strides(size):
    backbone = EfficientFormerV2("s0").eval()
    h, w = size
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, h, w))
    assert backbone.strides == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [(1, c, _down(h, i + 2), _down(w, i + 2))
                                               for i, c in enumerate(WIDTHS["s0"])]
    assert all(math.ceil(h / s) == f.shape[2] for f, s in zip(feats, backbone.strides))


def test_out_indices_and_arch_dict():
    arch = {"widths": [16, 24, 32, 48], "expansions": [[2], [2], [2, 2], [2, 2]], "attention": [0, 0, 1, 1]}
    backbone = EfficientFormerV2(arch, out_indices=(1, 3))
    feats = backbone(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [24, 48] and backbone.strides == [8, 32]
    with pytest.raises(ValueError, match="frozen_stages"):
        EfficientFormerV2("s0", frozen_stages=5)


def test_norm_eval_keeps_batchnorm_frozen():
    backbone = EfficientFormerV2("s0", norm_eval=True)
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.requires_grad for m in convs)
    before = [m.running_mean.clone() for m in bns]
    backbone(torch.randn(2, 3, 64, 64)).__getitem__(-1).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    assert all(p.grad is None for m in bns for p in m.parameters())


def test_frozen_stages():
    backbone = EfficientFormerV2("s0", frozen_stages=2)
    backbone.train()
    frozen = [backbone.body.stem, *backbone.body.stages[:2]]
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(not p.requires_grad for f in frozen for p in f.parameters())
    assert all(m.training for s in backbone.body.stages[2:] for m in s.modules())
    assert all(p.requires_grad for s in backbone.body.stages[2:] for p in s.parameters())


@pytest.fixture(scope="module")
def reference():
    model = timm.create_model("efficientformerv2_s0")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("fmt", ["project", "timm", "official"])
def test_pretrained_init_from_each_format(tmp_path, reference, fmt):
    sd = reference.state_dict()
    if fmt == "project":
        model = efficientformerv2_s0()
        model.load_state_dict({k.replace("attention_biases", "pos_bias.attention_biases"): v for k, v in sd.items()})
        path = save_checkpoint(model, tmp_path / "s0.safetensors")
    elif fmt == "timm":
        path = tmp_path / "s0_timm.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "eformer_s0_450.pth"
        torch.save({"model": official_layout(sd)}, path)
    backbone = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    reference.eval()
    backbone.eval()
    x = torch.randn(1, 3, 224, 224)  # timm's attention biases are fixed to the 224 grid
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        torch.testing.assert_close(list(backbone(x)), expected, rtol=1e-4, atol=1e-4)


def test_pretrained_init_reports_missing_keys(tmp_path):
    sd = efficientformerv2_s0().state_dict()
    del sd["stages.2.blocks.4.token_mixer.k.bn.weight"]
    path = save_checkpoint(sd, tmp_path / "broken.safetensors")
    backbone = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r"missing: stages\.2\.blocks\.4\.token_mixer\.k\.bn\.weight"):
        backbone.init_weights()
    with pytest.raises(ValueError, match="checkpoint"):
        EfficientFormerV2("s0", init_cfg=dict(type="Pretrained"))


@pytest.fixture(scope="module")
def toy_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_coco")
    return make_toy_coco(root, sizes={"train": 4, "val": 2})


def test_toy_coco_is_deterministic_and_valid(tmp_path, toy_coco):
    from pycocotools.coco import COCO

    again = make_toy_coco(tmp_path / "again", sizes={"train": 4, "val": 2})
    for f in ["annotations/instances_train2017.json", "train2017/000000000001.jpg"]:
        assert (toy_coco / f).read_bytes() == (again / f).read_bytes()
    coco = COCO(str(toy_coco / "annotations/instances_val2017.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and {a["category_id"] for a in anns} <= {1, 2, 3}
    kinds = {type(a["segmentation"]).__name__ for a in coco.loadAnns(coco.getAnnIds())}
    kinds |= {type(a["segmentation"]).__name__ for a in
              COCO(str(toy_coco / "annotations/instances_train2017.json")).dataset["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and RLE
    for a in anns:
        assert coco.annToMask(a).sum() == a["area"]


def test_train_evaluate_resume_on_toy_coco(tmp_path, toy_coco):
    """Two iterations of Mask R-CNN, CocoMetric evaluation, test from the checkpoint, resume.
    (The command-line tools run in tests/test_segmentation.py.)"""
    # a classifier at 64 px like the one `make demo` trains
    backbone_ckpt = save_checkpoint(efficientformerv2_s0(img_size=64), tmp_path / "s0.safetensors")
    ann = str(toy_coco / "annotations/instances_val2017.json")
    options = {"train_dataloader.batch_size": 2, "val_dataloader.batch_size": 2, "test_dataloader.batch_size": 2,
               "train_dataloader.dataset.data_root": str(toy_coco), "val_dataloader.dataset.data_root": str(toy_coco),
               "test_dataloader.dataset.data_root": str(toy_coco), "val_evaluator.ann_file": ann,
               "test_evaluator.ann_file": ann, "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1,
               "model.test_cfg.rcnn.score_thr": 0.0, "default_hooks.checkpoint.interval": 1,
               "model.backbone.init_cfg.checkpoint": str(backbone_ckpt)}
    config = DET / "mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py"
    runner = mm_train(config, tmp_path / "run", options)
    assert runner.iter == 2
    logged = runner.message_hub.log_scalars
    assert 0 <= logged["val/coco/bbox_mAP"].current() <= 1 and 0 <= logged["val/coco/segm_mAP"].current() <= 1
    ckpt = tmp_path / "run" / "epoch_1.pth"
    metrics = mm_test(config, ckpt, tmp_path / "test", options)  # load_from under torch's safe loading
    assert {"coco/bbox_mAP", "coco/segm_mAP", "coco/bbox_mAP_50"} <= set(metrics)
    options["train_cfg.max_epochs"] = 2
    runner = mm_train(config, tmp_path / "run", options, resume=str(ckpt))
    assert runner.iter == 4
    resumed = torch.load(tmp_path / "run" / "epoch_2.pth", map_location="cpu", weights_only=True)
    assert (resumed["meta"]["epoch"], resumed["meta"]["iter"]) == (2, 4)


class _Sneaky:
    def __reduce__(self):  # pickled as getattr(HistoryBuffer, "__init__"): must not be resolved
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, "__init__")


def test_safe_loading_allows_only_mmengine_statistics(tmp_path):
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({"hub": buf}, tmp_path / "ok.pth")
    assert torch.load(tmp_path / "ok.pth", weights_only=True)["hub"].current() == 1.5
    torch.save({"x": _Sneaky()}, tmp_path / "bad.pth")
    with pytest.raises(pickle.UnpicklingError, match="refused getattr"):
        torch.load(tmp_path / "bad.pth", weights_only=True)
