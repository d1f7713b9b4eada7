"""MMSegmentation: the configs build Semantic FPN with the EfficientFormerV2 backbone from mmseg's
registry, segmentation needs neither mmdet nor `detection`, and a real Semantic FPN
train/evaluate/resume round on toy ADE20K data through mmengine's Runner."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# without the OpenMMLab stack this module is skipped (visibly), so -m "not mm" runs everywhere
pytest.importorskip("mmengine")

from mmengine.config import Config
from PIL import Image

from backbones import efficientformerv2_s0, save_checkpoint
from openmmlab import EfficientFormerV2
from openmmlab.runner import train as mm_train
from segmentation.toy_data import make_toy_ade20k

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "configs" / "segmentation"
from conftest import SHORT_NAMES, WIDTHS as _WIDTHS

WIDTHS = {SHORT_NAMES[name]: widths for name, widths in _WIDTHS.items()}  # by short name (s0, ...)


@pytest.mark.parametrize("variant", sorted(WIDTHS))
def test_configs_build_from_the_mmseg_registry(variant):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(SEG / f"fpn_efficientformerv2-{variant}_ade20k-512x512_40k.py"))
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=2e-4, weight_decay=1e-4)
    assert cfg.param_scheduler[0]["type"] == "PolyLR" and cfg.param_scheduler[0]["power"] == 0.9
    assert cfg.train_cfg.max_iters == 40000 and cfg.train_dataloader.batch_size * 8 == 32
    assert cfg.crop_size == (512, 512) and cfg.model.decode_head.num_classes == 150
    assert cfg.model.neck.in_channels == WIDTHS[variant]
    # timm's ImageNet weights by name: no manual download on a connected machine
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained",
                                               checkpoint=f"hf-hub:timm/efficientformerv2_{variant}.snap_dist_in1k")
    if variant != "s0":  # one full segmentor is enough
        assert MODELS.build(cfg.model.backbone).widths == WIDTHS[variant]
        return
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "EncoderDecoder" and isinstance(model.backbone, EfficientFormerV2)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode="tensor")
    assert logits.shape == (1, 150, 16, 24)


def test_segmentation_without_mmdetection():
    """An MMSegmentation-only installation: mmdet blocked, `segmentation` and the toy config still
    build Semantic FPN (and run it), and neither mmdet nor `detection` is imported."""
    code = ("import sys; sys.modules['mmdet'] = None  # as if MMDetection were not installed\n"
            "import openmmlab, segmentation, segmentation.demo, segmentation.toy_data, torch\n"
            "from mmengine.config import Config\n"
            "from mmseg.registry import MODELS\n"
            "from mmseg.utils import register_all_modules\n"
            "register_all_modules()\n"
            "assert MODELS.build(dict(type='EfficientFormerV2', arch='s0')).widths == [32, 48, 96, 176]\n"
            "model = MODELS.build(Config.fromfile(sys.argv[1]).model).eval()\n"
            "assert type(model.backbone) is openmmlab.EfficientFormerV2\n"
            "with torch.no_grad():\n"
            "    logits = model(torch.randn(1, 3, 64, 64), mode='tensor')\n"
            "loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] in "
            "('mmdet', 'detection')]\n"
            "assert not loaded, loaded\n"
            "print(type(model).__name__, tuple(logits.shape))")
    out = subprocess.run([sys.executable, "-c", code, str(SEG / "fpn_efficientformerv2-s0_ade20k-toy.py")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "EncoderDecoder (1, 150, 16, 16)"


@pytest.fixture(scope="module")
def toy_ade(tmp_path_factory):
    return make_toy_ade20k(tmp_path_factory.mktemp("toy_ade"), sizes={"training": 4, "validation": 2})


def test_toy_ade20k_layout(tmp_path, toy_ade):
    again = make_toy_ade20k(tmp_path / "again", sizes={"training": 4, "validation": 2})
    f = "annotations/training/ADE_train_00000001.png"
    assert (toy_ade / f).read_bytes() == (again / f).read_bytes()
    labels = np.concatenate([np.array(Image.open(p)).ravel() for p in (toy_ade / "annotations").rglob("*.png")])
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5} and {0, 1} <= set(np.unique(labels))
    assert len(list((toy_ade / "images" / "validation").glob("*.jpg"))) == 2


def test_train_evaluate_resume_on_toy_ade20k(tmp_path, toy_ade):
    """Two iterations of Semantic FPN with IoUMetric evaluation, then a resume through the
    command-line tool in a fresh process (safe loading of mmengine's checkpoint)."""
    # a classifier at 64 px like the one `make demo` trains
    backbone_ckpt = save_checkpoint(efficientformerv2_s0(img_size=64), tmp_path / "s0.safetensors")
    options = {"train_dataloader.batch_size": 2, "train_dataloader.dataset.data_root": str(toy_ade),
               "val_dataloader.dataset.data_root": str(toy_ade), "test_dataloader.dataset.data_root": str(toy_ade),
               "train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2,
               "param_scheduler": [dict(type="PolyLR", power=0.9, begin=0, end=4, by_epoch=False)],
               "model.backbone.init_cfg.checkpoint": str(backbone_ckpt)}
    config = SEG / "fpn_efficientformerv2-s0_ade20k-toy.py"
    runner = mm_train(config, tmp_path / "run", options)
    assert runner.iter == 2
    assert 0 <= runner.message_hub.get_scalar("val/mIoU").current() <= 100
    assert (tmp_path / "run" / "iter_2.pth").is_file()

    cli_options = [f"{k}={v}" for k, v in options.items()
                   if k not in ("param_scheduler", "train_cfg.max_iters")]
    subprocess.run([sys.executable, str(ROOT / "tools/mm_train.py"), str(config), "--work-dir", str(tmp_path / "run"),
                    "--resume", "--cfg-options", *cli_options, "train_cfg.max_iters=4"],
                   check=True, cwd=tmp_path, capture_output=True)
    resumed = torch.load(tmp_path / "run" / "iter_4.pth", map_location="cpu", weights_only=True)
    assert resumed["meta"]["iter"] == 4


def test_mmseg_inferencer_from_the_toy_config_draws_on_any_image(tmp_path):
    """mmseg's MMSegInferencer, as users reach for it: the shipped toy config, a checkpoint of the
    model initialised here (with ADE20K's class names and palette in the meta, as mmengine writes
    them), an image of an odd size; it predicts a label map and draws it into out_dir/vis."""
    from mmseg.apis import MMSegInferencer
    from mmseg.datasets import ADE20KDataset
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    config = SEG / "fpn_efficientformerv2-s0_ade20k-toy.py"
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    weights = tmp_path / "iter_1.pth"
    meta = {"classes": ADE20KDataset.METAINFO["classes"], "palette": ADE20KDataset.METAINFO["palette"]}
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": meta}}, weights)
    rng = np.random.default_rng(0)
    image = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (131, 97, 3), dtype=np.uint8)).save(image)
    inferencer = MMSegInferencer(model=str(config), weights=str(weights), device="cpu")
    result = inferencer(str(image), out_dir=str(tmp_path / "out"), return_vis=True)
    labels = result["predictions"]
    assert labels.shape == (131, 97) and 0 <= labels.min() and labels.max() < 150
    vis = result["visualization"]
    assert vis.shape == (131, 97, 3) and not np.array_equal(vis, np.array(Image.open(image)))
    assert (tmp_path / "out" / "vis" / "photo.jpg").is_file()
