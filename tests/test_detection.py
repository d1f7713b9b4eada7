"""MMDetection: the configs build Mask R-CNN with the EfficientFormerV2 backbone from mmdet's
registry, detection needs neither mmseg nor `segmentation`, and the toy COCO set. (A real Mask R-CNN
train/evaluate/resume round through mmengine's Runner: tests/test_dense_cli.py, beside the tools'
runs; the backbone itself, shared with segmentation, is tested in tests/test_openmmlab.py.)"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# without the OpenMMLab stack this module is skipped (visibly), so -m "not mm" runs everywhere
pytest.importorskip("mmengine")

from mmengine.config import Config

from detection.toy_data import make_toy_coco
from openmmlab import EfficientFormerV2

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parents[1]
DET = ROOT / "configs" / "detection"
from conftest import SHORT_NAMES, WIDTHS as _WIDTHS

WIDTHS = {SHORT_NAMES[name]: widths for name, widths in _WIDTHS.items()}  # by short name (s0, ...)


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
    # timm's ImageNet weights by name: no manual download on a connected machine
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained",
                                               checkpoint=f"hf-hub:timm/efficientformerv2_{variant}.snap_dist_in1k")
    model = MODELS.build(cfg.model if variant == "s0" else cfg.model.backbone)  # one full detector is enough
    backbone = model.backbone if variant == "s0" else model
    assert isinstance(backbone, EfficientFormerV2) and backbone.widths == WIDTHS[variant] and backbone.norm_eval
    assert variant != "s0" or type(model).__name__ == "MaskRCNN"


def test_detection_without_mmsegmentation():
    """An MMDetection-only installation: mmseg blocked, `detection` and the toy config still
    build Mask R-CNN, and neither mmseg nor `segmentation` is imported."""
    code = ("import sys; sys.modules['mmseg'] = None  # as if MMSegmentation were not installed\n"
            "import detection, detection.demo, detection.toy_data, openmmlab\n"
            "from mmdet.registry import MODELS\n"
            "from mmdet.utils import register_all_modules\n"
            "from mmengine.config import Config\n"
            "register_all_modules()\n"
            "model = MODELS.build(Config.fromfile(sys.argv[1]).model)\n"
            "assert type(model.backbone) is openmmlab.EfficientFormerV2\n"
            "loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] in "
            "('mmseg', 'segmentation')]\n"
            "assert not loaded, loaded\n"
            "print(type(model).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(DET / "mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "MaskRCNN"


@pytest.fixture(scope="module")
def toy_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_coco")
    return make_toy_coco(root, sizes={"train": 4, "val": 2})


def test_toy_coco_is_deterministic_and_valid(tmp_path, toy_coco):
    from pycocotools.coco import COCO

    again = make_toy_coco(tmp_path / "again", sizes={"train": 4, "val": 2})
    for f in ["annotations/instances_train2017.json", "train2017/000000000001.jpg"]:
        assert (toy_coco / f).read_bytes() == (again / f).read_bytes()
    # each split has its own stream: the val split alone is the val split of the whole set
    val_only = make_toy_coco(tmp_path / "val_only", sizes={"val": 2})
    assert not (val_only / "train2017").exists() or not any((val_only / "train2017").iterdir())
    assert (val_only / "annotations/instances_val2017.json").read_bytes() == \
        (toy_coco / "annotations/instances_val2017.json").read_bytes()
    coco = COCO(str(toy_coco / "annotations/instances_val2017.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and {a["category_id"] for a in anns} <= {1, 2, 3}
    kinds = {type(a["segmentation"]).__name__ for a in coco.loadAnns(coco.getAnnIds())}
    kinds |= {type(a["segmentation"]).__name__ for a in
              COCO(str(toy_coco / "annotations/instances_train2017.json")).dataset["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and RLE
    for a in anns:
        assert coco.annToMask(a).sum() == a["area"]


def test_det_inferencer_from_the_toy_config_draws_on_any_image(tmp_path):
    """mmdet's DetInferencer, as users reach for it: the shipped toy config, a checkpoint of the
    model initialised here (with its class names in the meta, as mmengine writes them), an image
    of an odd size; it predicts and draws boxes and masks into out_dir/vis."""
    import numpy as np
    from mmdet.apis import DetInferencer
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from PIL import Image

    from detection.toy_data import CLASSES

    register_all_modules()
    config = DET / "mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py"
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    weights = tmp_path / "epoch_1.pth"
    torch.save({"state_dict": model.state_dict(),
                "meta": {"dataset_meta": {"classes": CLASSES, "palette": [(220, 60, 50), (50, 200, 70), (60, 90, 230)]}}},
               weights)
    rng = np.random.default_rng(0)
    image = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (131, 97, 3), dtype=np.uint8)).save(image)
    inferencer = DetInferencer(model=str(config), weights=str(weights), device="cpu")
    result = inferencer(str(image), out_dir=str(tmp_path / "out"), return_vis=True, pred_score_thr=0.0)
    pred = result["predictions"][0]
    assert {"labels", "scores", "bboxes", "masks"} <= set(pred) and len(pred["labels"]) > 0
    assert all(0 <= label < len(CLASSES) for label in pred["labels"])
    vis = result["visualization"][0]
    assert vis.shape == (131, 97, 3) and not np.array_equal(vis, np.array(Image.open(image)))
    assert (tmp_path / "out" / "vis" / "photo.jpg").is_file()
