"""tools/mm_train.py and tools/mm_test.py as a newcomer runs them on data of their own: a real
Mask R-CNN train/evaluate/resume round on toy COCO data (one training shared by the tool and the
Runner tests), one --data-root that every loader and evaluator follows, --cfg-options keys that
set a variable of the config file refused, missing files named with their config key, no work
folders left by a failed attempt, and a dataset whose class names are not the config's: a clear
error, or --classes-from-data (COCO categories, an ADE-format folder's classes.txt) that sets
metainfo.classes and the heads' num_classes."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

# without the OpenMMLab stack this module is skipped (visibly), so -m "not mm" runs everywhere
pytest.importorskip("mmengine")

from backbones import efficientformerv2_s0, save_checkpoint
from detection.toy_data import make_toy_coco
from openmmlab.runner import ConfigError, load_config
from openmmlab.runner import test as mm_test
from openmmlab.runner import train as mm_train
from segmentation.toy_data import make_toy_ade20k
from tool_runner import assert_one_line_error as _assert_one_line_error, run_tool

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parents[1]
DET_TOY = ROOT / "configs/detection/mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py"
DET_PAPER = ROOT / "configs/detection/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py"
SEG_TOY = ROOT / "configs/segmentation/fpn_efficientformerv2-s0_ade20k-toy.py"
SEG_PAPER = ROOT / "configs/segmentation/fpn_efficientformerv2-s0_ade20k-512x512_40k.py"
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")




@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_toy_coco(tmp_path_factory.mktemp("my_coco"), sizes={"train": 2, "val": 2})


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return make_toy_ade20k(tmp_path_factory.mktemp("my_ade"), sizes={"training": 2, "validation": 1})


@pytest.fixture(scope="module")
def backbone_ckpt(tmp_path_factory):
    """A classifier at 64 px like the one `make demo` trains (the toy configs' img_size)."""
    return save_checkpoint(efficientformerv2_s0(img_size=64), tmp_path_factory.mktemp("s0") / "s0.safetensors")


def _renamed_coco(src: Path, dst: Path, names: dict[str, str], extra: list[str] = ()) -> Path:
    """A copy of a COCO-format folder whose categories carry other names (and `extra` unused ones)."""
    shutil.copytree(src, dst)
    for ann in (dst / "annotations").glob("*.json"):
        doc = json.loads(ann.read_text())
        for c in doc["categories"]:
            c["name"] = names[c["name"]]
        top = max(c["id"] for c in doc["categories"])
        doc["categories"] += [{"id": top + 1 + i, "name": n, "supercategory": "shape"} for i, n in enumerate(extra)]
        ann.write_text(json.dumps(doc))
    return dst


# --- item 2: one --data-root -------------------------------------------------------------------

@pytest.mark.parametrize("config", [DET_TOY, DET_PAPER, SEG_TOY, SEG_PAPER], ids=lambda p: p.stem)
def test_data_root_sets_every_loader_and_evaluator(tmp_path, config):
    cfg = load_config(config, tmp_path / "run", data_root=tmp_path)
    for loader in LOADERS:
        assert cfg[loader].dataset.data_root == str(tmp_path)
    for evaluator in ("val_evaluator", "test_evaluator"):
        if "ann_file" in cfg[evaluator]:  # COCO: the loader's annotation file under the new root
            assert cfg[evaluator].ann_file == str(tmp_path / "annotations/instances_val2017.json")
    # an evaluator's annotation file given by the user is kept
    mine = str(tmp_path / "mine.json")
    cfg = load_config(DET_TOY, tmp_path / "run", {"test_evaluator.ann_file": mine}, data_root=tmp_path)
    assert cfg.test_evaluator.ann_file == mine
    assert cfg.val_evaluator.ann_file == str(tmp_path / "annotations/instances_val2017.json")


# the Mask R-CNN options of a short toy run: one epoch of batch 2, evaluated (every detection kept, so
# that an untrained model has some to score), a checkpoint per epoch, the 64 px classifier's weights
def _det_options(backbone_ckpt: Path, epochs: int = 1) -> dict:
    return {"train_dataloader.batch_size": 2, "val_dataloader.batch_size": 2, "test_dataloader.batch_size": 2,
            "train_cfg.max_epochs": epochs, "train_cfg.val_interval": 1, "default_hooks.checkpoint.interval": 1,
            "model.test_cfg.rcnn.score_thr": 0.0, "model.backbone.init_cfg.checkpoint": str(backbone_ckpt)}


@pytest.fixture(scope="module")
def det_run(tmp_path_factory, coco, backbone_ckpt) -> tuple[Path, Path]:
    """The one Mask R-CNN training of the toy config: tools/mm_train.py on a copy of the toy COCO
    data elsewhere (--data-root), one iteration, COCO evaluation, epoch_1.pth. Shared by the tool
    test and the train/evaluate/resume round: (the data folder, the work dir)."""
    folder = tmp_path_factory.mktemp("det_run")
    data = shutil.copytree(coco, folder / "elsewhere")
    options = [f"{k}={v}" for k, v in _det_options(backbone_ckpt).items()]
    out = run_tool("mm_train", DET_TOY, "--data-root", data, "--work-dir", folder / "run", "--cfg-options",
                   *options, cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_brief_console(out.stdout, "mm_train")
    return data, folder / "run"


def _assert_brief_console(stdout: str, prog: str) -> None:
    """A real mmengine run's console, as the tools show it: progress and metrics only (no
    environment or config dump), ending with one summary line that says where the full log is."""
    lines = stdout.strip().splitlines()
    assert len(lines) < 40, stdout
    assert not any(word in stdout for word in ("System environment", "Config:", "sys.platform", "train_pipeline"))
    assert lines[-1].startswith(f"{prog}: coco/bbox_mAP ") and "coco/segm_mAP" in lines[-1], lines[-1]
    assert "(full log in " in lines[-1]


def test_mm_train_and_mm_test_follow_data_root(tmp_path, det_run):
    """The toy config on a copy of its data elsewhere: one option for train, val and test."""
    data, run = det_run
    assert (run / "epoch_1.pth").is_file()
    out = run_tool("mm_test", DET_TOY, run / "epoch_1.pth", "--data-root", data, "--work-dir",
                   tmp_path / "test", "--cfg-options", "test_dataloader.batch_size=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "coco/bbox_mAP:" in out.stdout and "coco/segm_mAP:" in out.stdout
    _assert_brief_console(out.stdout, "mm_test")


def test_the_det_demo_shows_progress_and_ends_with_its_metrics(tmp_path, coco, backbone_ckpt):
    """tools/demo_dense.py det on a toy COCO folder (one iteration): the console keeps mmengine's
    progress lines and the demo's own lines (no environment, config or COCO tables), the work dir's
    log file mmengine's whole log, and the last line is the demo's summary."""
    data = tmp_path / "data"
    shutil.copytree(coco, data / "toy_coco")
    options = [f"{k}={v}" for k, v in _det_options(backbone_ckpt).items() if k != "model.backbone.init_cfg.checkpoint"]
    out = run_tool("demo_dense", "det", "--data", data, "--backbone", backbone_ckpt, "--work-dir", tmp_path / "run",
                   "--threads", "1", "--cfg-options", *options, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert not any(word in out.stdout for word in ("System environment", "Config:", "Average Precision"))
    assert any("Epoch(train)" in line for line in lines)
    assert any(line.startswith("demo-det: 1 iterations") for line in lines)
    assert re.fullmatch(r"demo-det: bbox mAP \d\.\d{3} segm mAP \d\.\d{3} in \d+ s", lines[-1]), lines[-1]
    (log,) = (tmp_path / "run").glob("*/*.log")
    assert "System environment" in log.read_text() and "Epoch(val)" in log.read_text()  # the whole log


def test_train_evaluate_resume_on_toy_coco(tmp_path, det_run, backbone_ckpt):
    """A real Mask R-CNN round through mmengine's Runner: the shared run's iteration and CocoMetric
    evaluation, test from its checkpoint, resume for a second epoch."""
    data, run = det_run
    ckpt = run / "epoch_1.pth"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # mmengine's checkpoint, safe loading
    assert (state["meta"]["epoch"], state["meta"]["iter"]) == (1, 1)  # 2 images, batch 2
    (scalars,) = run.glob("*/vis_data/scalars.json")
    logged = [{k.removeprefix("val/"): v for k, v in json.loads(line).items()}
              for line in scalars.read_text().splitlines()]
    val = [entry for entry in logged if "coco/bbox_mAP" in entry]   # the evaluation's line
    assert val and 0 <= val[-1]["coco/bbox_mAP"] <= 1 and 0 <= val[-1]["coco/segm_mAP"] <= 1
    metrics = mm_test(DET_TOY, ckpt, tmp_path / "test", {"test_dataloader.batch_size": 2}, data_root=data)
    assert {"coco/bbox_mAP", "coco/segm_mAP", "coco/bbox_mAP_50"} <= set(metrics)  # load_from under safe loading
    resumed_run = shutil.copytree(run, tmp_path / "run")   # the shared run stays as it is
    runner = mm_train(DET_TOY, resumed_run, _det_options(backbone_ckpt, epochs=2),
                      resume=str(resumed_run / "epoch_1.pth"), data_root=data)
    assert runner.iter == 2
    resumed = torch.load(resumed_run / "epoch_2.pth", map_location="cpu", weights_only=True)
    assert (resumed["meta"]["epoch"], resumed["meta"]["iter"]) == (2, 2)


@pytest.mark.parametrize("option, fragments", [
    ("data_root=somewhere", ["'data_root' is a variable of the config file", "--data-root DIR"]),
    ("metainfo.classes=('a','b')", ["'metainfo'", "train_dataloader.dataset.metainfo.classes", "--classes-from-data"]),
    ("max_epochs=1", ["'max_epochs'", "train_cfg.max_epochs"]),
])
def test_cfg_options_that_set_a_variable_of_the_file_are_refused(tmp_path, option, fragments):
    out = run_tool("mm_train", DET_TOY, "--cfg-options", option, cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", *fragments)
    assert not (tmp_path / "work_dirs").exists()
    out = run_tool("mm_train", DET_TOY, "--data-root", tmp_path, "--cfg-options",
                   f"val_dataloader.dataset.data_root={tmp_path}", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "--data-root", "val_dataloader.dataset.data_root", "pass one")


def test_missing_annotation_file_and_image_folder_name_their_config_key(tmp_path, coco):
    data = shutil.copytree(coco, tmp_path / "data")
    (data / "annotations/instances_val2017.json").rename(data / "val.json")
    out = run_tool("mm_train", DET_TOY, "--data-root", data, cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "val_dataloader.dataset.ann_file",
                           str(data / "annotations/instances_val2017.json"), "--data-root")
    # the evaluator's own annotation file, when the loader's is fine
    (data / "val.json").rename(data / "annotations/instances_val2017.json")
    missing = tmp_path / "nowhere.json"
    out = run_tool("mm_train", DET_TOY, "--data-root", data, "--cfg-options", f"val_evaluator.ann_file={missing}",
                   cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "val_evaluator.ann_file", str(missing))
    shutil.rmtree(data / "train2017")
    out = run_tool("mm_train", DET_TOY, "--data-root", data, cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "train_dataloader.dataset.data_prefix.img", str(data / "train2017"))
    torch.save({"state_dict": {}}, tmp_path / "epoch_1.pth")
    shutil.rmtree(data / "val2017")
    out = run_tool("mm_test", DET_TOY, tmp_path / "epoch_1.pth", "--data-root", data, cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "test_dataloader.dataset.data_prefix.img", str(data / "val2017"))
    out = run_tool("mm_test", SEG_TOY, tmp_path / "epoch_1.pth", "--data-root", tmp_path / "none", cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "--data-root", str(tmp_path / "none"), "not a folder")
    assert not (tmp_path / "work_dirs").exists()


def test_failed_attempts_leave_no_work_folders(tmp_path, ade):
    # fails while the run is built (after mmengine made its timestamped folder): a new work dir goes
    out = run_tool("mm_train", SEG_TOY, "--data-root", ade, "--work-dir", tmp_path / "new/run", "--cfg-options",
                   "train_dataloader.dataset.img_sufix=.png", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "img_sufix")
    assert not (tmp_path / "new").exists()
    # a user's existing folder stays, with what it held, and without a new timestamped folder
    mine = tmp_path / "mine"
    (mine / "20240101_000000").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me\n")
    out = run_tool("mm_train", SEG_TOY, "--data-root", ade, "--work-dir", mine, "--cfg-options",
                   "train_dataloader.dataset.img_sufix=.png", cwd=tmp_path)
    assert out.returncode == 2
    assert sorted(p.name for p in mine.iterdir()) == ["20240101_000000", "notes.txt"]
    # fails when the backbone's weights cannot be read, before the first iteration
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="broken.safetensors"):
        mm_train(SEG_TOY, mine, {"model.backbone.init_cfg.checkpoint": str(broken)}, data_root=ade)
    assert sorted(p.name for p in mine.iterdir()) == ["20240101_000000", "notes.txt"]
    out = run_tool("mm_train", SEG_TOY, "--data-root", ade, "--work-dir", tmp_path / "run", "--cfg-options",
                   f"model.backbone.init_cfg.checkpoint={tmp_path / 'none.pth'}", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "model.backbone.init_cfg.checkpoint", "none.pth")
    assert not (tmp_path / "run").exists()


# --- item 3: one's own classes -----------------------------------------------------------------

def test_paper_config_on_coco_data_with_other_classes_is_one_clear_error(tmp_path, coco):
    data = _renamed_coco(coco, tmp_path / "mine", {"circle": "disc", "square": "box", "triangle": "wedge"})
    out = run_tool("mm_train", DET_PAPER, "--data-root", data, "--work-dir", tmp_path / "run", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "train_dataloader.dataset", "disc, box, wedge", "metainfo.classes",
                           "person", "--classes-from-data")
    assert "need at least one array" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_classes_from_data_trains_on_the_coco_files_classes(tmp_path, coco, backbone_ckpt):
    """The toy config (3 classes) on a folder with 4 other category names: names into every
    loader, 4 classes in both heads; the dumped config then tests the checkpoint as it is."""
    data = _renamed_coco(coco, tmp_path / "mine", {"circle": "disc", "square": "box", "triangle": "wedge"},
                         extra=["star"])
    out = run_tool("mm_train", DET_TOY, "--data-root", data, cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "metainfo.classes", "--classes-from-data")
    options = {"train_dataloader.batch_size": 2, "val_dataloader.batch_size": 2, "train_cfg.max_epochs": 1,
               "train_cfg.val_interval": 1, "default_hooks.checkpoint.interval": 1,
               "model.backbone.init_cfg.checkpoint": str(backbone_ckpt)}
    runner = mm_train(DET_TOY, tmp_path / "run", options, data_root=data, classes_from_data=True)
    heads = runner.model.roi_head
    assert heads.bbox_head.num_classes == 4 and heads.mask_head.num_classes == 4
    for loader in (runner.train_dataloader, runner.val_dataloader):
        assert loader.dataset.metainfo["classes"] == ("disc", "box", "wedge", "star")
    assert 0 <= runner.message_hub.get_scalar("val/coco/bbox_mAP").current() <= 1
    dumped = tmp_path / "run" / DET_TOY.name
    metrics = mm_test(dumped, tmp_path / "run" / "epoch_1.pth", tmp_path / "test", {"test_dataloader.batch_size": 2})
    assert "coco/bbox_mAP" in metrics


def test_ade_format_folder_with_its_own_classes(tmp_path, ade, backbone_ckpt):
    """An ADE-format folder (0 = ignore, labels 1..5) that names its classes in classes.txt: the
    150-class ADE20K config says so in one line, and --classes-from-data trains 5 classes."""
    data = shutil.copytree(ade, tmp_path / "mine")
    names = ["ground", "disc", "rectangle", "triangle", "ring"]
    (data / "classes.txt").write_text("\n".join(names) + "\n")
    out = run_tool("mm_train", SEG_TOY, "--data-root", data, "--work-dir", tmp_path / "run", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "classes.txt", "5 classes", "150 metainfo.classes", "--classes-from-data")
    assert not (tmp_path / "run").exists()
    # ADE20KDataset takes only ADE20K's names (its label ids are ADE20K's)
    out = run_tool("mm_train", SEG_TOY, "--data-root", ade, "--cfg-options",
                   "train_dataloader.dataset.metainfo.classes=('ground','disc')", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "train_dataloader.dataset.metainfo.classes", "BaseSegDataset",
                           "--classes-from-data")
    options = {"train_dataloader.batch_size": 2, "train_cfg.max_iters": 1, "train_cfg.val_interval": 1,
               "default_hooks.checkpoint.interval": 1, "model.backbone.init_cfg.checkpoint": str(backbone_ckpt),
               "param_scheduler": [dict(type="PolyLR", power=0.9, begin=0, end=1, by_epoch=False)]}
    runner = mm_train(SEG_TOY, tmp_path / "run", options, data_root=data, classes_from_data=True)
    assert runner.model.decode_head.num_classes == 5
    dataset = runner.train_dataloader.dataset
    assert type(dataset).__name__ == "BaseSegDataset" and dataset.metainfo["classes"] == tuple(names)
    assert dataset.reduce_zero_label and runner.val_dataloader.dataset.metainfo["classes"] == tuple(names)
    assert 0 <= runner.message_hub.get_scalar("val/mIoU").current() <= 100


def test_classes_from_data_without_names_says_where_to_put_them(tmp_path, ade):
    with pytest.raises(ConfigError, match=r"classes\.txt.*one per line"):
        load_config(SEG_TOY, tmp_path / "run", data_root=ade, classes_from_data="train")
    out = run_tool("mm_test", SEG_TOY, tmp_path / "x.pth", "--classes-from-data", cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "x.pth", "not found")
