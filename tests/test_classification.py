"""Classification package: toy data, robust image reading, the data module, the recipe's values
in the live optimizer/scheduler/mixup/clipping objects, the weight-decay policy shared with the
supernet, and distillation with a tiny teacher."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from backbones.supernet import SearchSpace
from classification.__main__ import cli
from classification.data import ImageNetDataModule
from classification.module import ImageClassifier
from classification.optim import decays
from classification.supernet import SupernetModule
from classification.toy_data import CLASSES, make_toy_classification
from imagefolder import DataError, ImageFolderDataset, collate_skip_bad, load_rgb, scan_split

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "classification"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run fastest on one thread


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_classification(tmp_path_factory.mktemp("toy"), seed=0, train_per_class=4,
                                   val_per_class=2, size=32)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.JPEG")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# toy data and image reading
# ---------------------------------------------------------------------------------------------
def test_toy_data_layout_and_determinism(tmp_path):
    a = make_toy_classification(tmp_path / "a", seed=3, train_per_class=3, val_per_class=2)
    b = make_toy_classification(tmp_path / "b", seed=3, train_per_class=3, val_per_class=2)
    c = make_toy_classification(tmp_path / "c", seed=4, train_per_class=3, val_per_class=2)
    assert _digest(a) == _digest(b) != _digest(c)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(CLASSES) == \
        sorted(p.name for p in (a / "val").iterdir())
    assert len(list((a / "train").rglob("*.JPEG"))) == 30 and len(list((a / "val").rglob("*.JPEG"))) == 20
    with Image.open(next((a / "val" / "ring").iterdir())) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_load_rgb_converts_grayscale_cmyk_16bit(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "mid16.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    out = {p.stem: load_rgb(p) for p in tmp_path.iterdir()}
    assert all(im.mode == "RGB" and im.size == (8, 8) for im in out.values())
    assert np.asarray(out["gray"])[0, 0].tolist() == [77, 77, 77]
    r, g, b = np.asarray(out["cmyk"])[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    assert np.asarray(out["white16"])[0, 0].tolist() == [255, 255, 255]  # scaled, not clipped
    assert np.asarray(out["mid16"])[0, 0].tolist() == [128, 128, 128]
    assert np.asarray(out["rgba"])[0, 0].tolist() == [10, 20, 30]


def _bad_files(folder: Path) -> list[Path]:
    good = next(folder.iterdir()).read_bytes()
    paths = [folder / "zero.JPEG", folder / "truncated.JPEG", folder / "garbage.JPEG"]
    paths[0].write_bytes(b"")
    paths[1].write_bytes(good[: len(good) // 2])
    paths[2].write_bytes(b"this is not an image" * 10)
    return paths


def test_bad_images_are_skipped_counted_and_named(tmp_path):
    root = make_toy_classification(tmp_path / "d", train_per_class=2, val_per_class=1, size=32)
    bad = _bad_files(root / "train" / "circle")
    dm = ImageNetDataModule(str(root), img_size=32, batch_size=4, num_workers=0, drop_last=False)
    dm.setup("fit")
    with pytest.warns(RuntimeWarning) as record:
        seen = sum(len(b[1]) for b in dm.train_dataloader() if b is not None)
    messages = " ".join(str(w.message) for w in record)
    assert all(str(p) in messages for p in bad)
    assert dm.num_skipped == 3
    assert seen == 20  # 23 files, 3 bad
    # an all-bad batch collates to None; mixed batches keep only the good samples
    assert collate_skip_bad([None, None]) is None
    x, y = collate_skip_bad([None, (torch.zeros(3, 4, 4), 1)])
    assert x.shape == (1, 3, 4, 4) and y.tolist() == [1]


def test_missing_root_and_empty_class_fail_with_a_fix(tmp_path, toy):
    with pytest.raises(DataError, match="does not exist.*--data.root"):
        ImageNetDataModule(str(tmp_path / "nowhere"))
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        ImageNetDataModule(str(tmp_path / "noclass"))
    empty = tmp_path / "empty"
    make_toy_classification(empty, train_per_class=1, val_per_class=1, size=32)
    (empty / "train" / "zebra").mkdir()
    dm = ImageNetDataModule(str(empty), img_size=32, num_workers=0)
    with pytest.raises(DataError, match=r"zebra.*holds no images"):
        dm.setup("fit")
    (empty / "val" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn"):
        scan_split(empty / "val", {c: i for i, c in enumerate(CLASSES)})


def test_seeded_augmentation_is_independent_of_history(toy):
    dm = ImageNetDataModule(str(toy), img_size=32, batch_size=4, num_workers=0, scale=(0.2, 1.0),
                            auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5)
    ds: ImageFolderDataset = dm._dataset("train")
    a = ds[(5, 0, 1)][0]
    torch.rand(10), np.random.rand(3)  # other randomness in between changes nothing
    assert torch.equal(a, ds[(5, 0, 1)][0])
    assert not torch.equal(a, ds[(5, 0, 2)][0])  # another epoch, another augmentation


# ---------------------------------------------------------------------------------------------
# the recipe, inspected on the live objects
# ---------------------------------------------------------------------------------------------
def _cli(config: str, root: Path, *extra: str, run: bool = False):
    return cli([*(["fit"] if run else []), "--config", str(CONFIGS / config), "--data.root", str(root), *extra],
               run=run)


@pytest.mark.parametrize("variant,drop_path", [("s0", 0.0), ("s1", 0.0), ("s2", 0.02), ("l", 0.1)])
def test_variant_configs_hold_the_paper_recipe(toy, variant, drop_path):
    c = _cli(f"efficientformerv2_{variant}.yaml", toy, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--data.num_workers", "0")
    h, d, t = c.model.hparams, c.datamodule.hparams, c.trainer
    assert c.model.model.drop_path_rate == drop_path
    rates = [m.drop_prob for m in c.model.model.modules() if hasattr(m, "drop_prob")]
    assert max(rates, default=0.0) == pytest.approx(drop_path)
    assert (h.optimizer, h.base_lr, h.lr_base_batch, h.lr, h.weight_decay, h.warmup_epochs) == \
        ("adamw", 1e-3, 1024, None, 0.025, 5)
    assert (h.mixup, h.cutmix, h.label_smoothing, h.teacher) == (0.8, 1.0, 0.1, None)
    assert (c.config.trainer.devices, c.config.trainer.strategy) == ("1", "auto")  # overridden here; 8 GPUs in the file
    assert (t.max_epochs, t.gradient_clip_val, t.gradient_clip_algorithm) == (300, 0.01, "norm")
    assert (d.img_size, d.crop_pct, d.interpolation, d.batch_size) == (224, 0.9, "bicubic", 128)
    assert h.num_classes == 10 and h.batch_size == 128 and h.img_size == 224  # linked from the data
    # timm transforms carry the recipe
    train_tf = c.datamodule.train_transform().transforms
    ra = next(t for t in train_tf if isinstance(t, RandAugment))
    assert {op.magnitude for op in ra.ops} == {9} and all(op.magnitude_std == 0.5 for op in ra.ops)
    erase = next(t for t in train_tf if isinstance(t, RandomErasing))
    assert erase.probability == 0.25
    assert train_tf[0].interpolation in ("bicubic", T.InterpolationMode.BICUBIC) or \
        "bicubic" in str(train_tf[0]).lower()
    eval_tf = c.datamodule.eval_transform().transforms
    assert eval_tf[0].size == int(224 / 0.9) and eval_tf[1].size == (224, 224)
    assert eval_tf[0].interpolation == T.InterpolationMode.BICUBIC
    # mixup
    mix = c.model.mixup_fn
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob, mix.label_smoothing,
            mix.num_classes, mix.mode) == (0.8, 1.0, 1.0, 0.5, 0.1, 10, "batch")


class _Inspect(Callback):
    """Records the optimizer, scheduler and the gradient norm after Lightning's clipping."""

    def __init__(self) -> None:
        self.grad_norms: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.optimizer = trainer.optimizers[0]
        self.scheduler = trainer.lr_scheduler_configs[0].scheduler
        self.interval = trainer.lr_scheduler_configs[0].interval
        self.lrs = [g["lr"] for g in self.optimizer.param_groups]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True  # one epoch of the 300-epoch schedule is enough to inspect


def test_recipe_reaches_optimizer_scheduler_and_clipping(toy):
    c = _cli("efficientformerv2_s0.yaml", toy, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--data.num_workers", "0",
             "--data.img_size", "32", "--data.batch_size", "4", "--trainer.accumulate_grad_batches", "2",
             "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "0",
             "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "true",
             "--checkpoint.dirpath", str(toy.parent / "ck_recipe"),
             "--trainer.default_root_dir", str(toy.parent / "recipe_run"))  # where config.yaml is saved
    probe = _Inspect()
    c.trainer.callbacks.append(probe)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    opt, sched = probe.optimizer, probe.scheduler
    assert type(opt).__name__ == "AdamW"
    decays = sorted({g["weight_decay"] for g in opt.param_groups})
    assert decays == [0.0, 0.025]  # no decay on norms and biases
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    peak = 1e-3 * (4 * 1 * 2) / 1024  # batch x devices x accumulation / 1024
    assert sched.base_values == [pytest.approx(peak)] * len(opt.param_groups)
    steps_per_epoch = 4 // 2
    assert type(sched).__name__ == "CosineLRScheduler" and probe.interval == "step"
    assert (sched.t_initial, sched.warmup_t, sched.warmup_lr_init, sched.lr_min) == \
        (300 * steps_per_epoch, 5 * steps_per_epoch, 1e-6, 1e-5)
    assert probe.lrs == [pytest.approx(1e-6)] * len(opt.param_groups)  # warm-up starts low
    lr_after = [g["lr"] for g in opt.param_groups][0]
    assert lr_after == pytest.approx(1e-6 + steps_per_epoch * (peak - 1e-6) / (5 * steps_per_epoch))
    # Lightning clipped the total gradient norm to 0.01 before each optimizer step
    stepped = probe.grad_norms[1::2]
    assert stepped and all(0 < n <= 0.01 * 1.0001 for n in stepped)


# ---------------------------------------------------------------------------------------------
# weight decay: one policy for the classifier and the supernet (classification.optim)
# ---------------------------------------------------------------------------------------------
class _FakeTrainer:
    """What the two modules' configure_optimizers read from their Trainer."""
    estimated_stepping_batches, max_epochs, world_size, accumulate_grad_batches = 10, 1, 1, 1


def _decay_by_name(module, network) -> dict[str, float]:
    """weight_decay of each of `network`'s parameters in `module`'s optimizer."""
    module._trainer = _FakeTrainer()
    try:
        optimizer = module.configure_optimizers()["optimizer"]
    finally:
        module._trainer = None
    group_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == sum(1 for p in network.parameters() if p.requires_grad)  # each parameter once
    return {name: group_of[id(p)] for name, p in network.named_parameters()}


def _kind(name: str, ndim: int) -> str:
    if name.endswith("attention_biases"):
        return "attention-bias table"
    if name.endswith(".gamma"):
        return "layer scale"
    if name.endswith(".bias"):
        return "bias"
    return "norm weight" if ndim == 1 else "conv/linear weight"


def test_weight_decay_policy_is_one_for_classifier_and_supernet():
    space = SearchSpace(widths=((8, 16), (16,), (16, 24), (24, 32)), depths=(2, 1, 2, 2), expansions=(2, 4),
                        stem_widths=(8,))
    supernet = SupernetModule(space=space.to_dict(), num_classes=3, img_size=32, weight_decay=0.05, warmup_epochs=0)
    arch = supernet.supernet.extract(space.largest()).arch.to_dict()
    classifier = ImageClassifier(arch=arch, num_classes=3, img_size=32, weight_decay=0.05, lr=1e-3)
    ours = {"supernet": _decay_by_name(supernet, supernet.supernet),
            "classifier": _decay_by_name(classifier, classifier.model)}
    shapes = {"supernet": dict(supernet.supernet.named_parameters()), "classifier": dict(classifier.model.named_parameters())}
    # the official training's groups (timm's factory on a model without no_weight_decay()): decay on
    # weights, attention-bias tables and layer scales; none on norms and biases
    expected = {"attention-bias table": 0.05, "layer scale": 0.05, "conv/linear weight": 0.05,
                "norm weight": 0.0, "bias": 0.0}
    for which, decay in ours.items():
        seen = {}
        for name, wd in decay.items():
            kind = _kind(name, shapes[which][name].ndim)
            assert wd == expected[kind], (which, name, kind, wd)
            assert decays(name, shapes[which][name]) == (wd > 0)
            seen[kind] = seen.get(kind, 0) + 1
        assert set(seen) == set(expected), (which, seen)  # every kind is there to be checked
    # the same parameter name lands in the same group in both modules
    shared = set(ours["supernet"]) & set(ours["classifier"])
    assert {_kind(n, shapes["classifier"][n].ndim) for n in shared} >= {"attention-bias table", "layer scale",
                                                                        "bias", "conv/linear weight"}
    assert all(ours["supernet"][n] == ours["classifier"][n] for n in shared)


# ---------------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    teacher = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    return path


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distillation_loss_with_tiny_teacher(tiny_teacher, kind):
    m = ImageClassifier(num_classes=10, img_size=32, teacher={"name": "test_resnet", "checkpoint": str(tiny_teacher)},
                        distillation_type=kind, distillation_alpha=0.3, distillation_tau=2.0, label_smoothing=0.0)
    assert m.teacher is None  # read for fitting only: validate, test and predict need no teacher file
    m.setup("fit")
    assert m.model.head_dist is not None and not any(p.requires_grad for p in m.teacher.parameters())
    m.train()
    assert m.model.training and not m.teacher.training
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = m.training_step((x, y), 0)
        torch.manual_seed(0)
    logits, logits_dist = m.model(x)  # drop path 0: same outputs again
    t = m.teacher(x)
    if kind == "hard":
        distill = F.cross_entropy(logits_dist, t.argmax(1))
    else:
        distill = F.kl_div(F.log_softmax(logits_dist / 2, 1), F.log_softmax(t / 2, 1), reduction="batchmean",
                           log_target=True) * 4
    expected = 0.7 * F.cross_entropy(logits, y) + 0.3 * distill
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert m.model.head_dist.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher.parameters())


def test_teacher_needs_weights(tmp_path):
    with pytest.raises(ValueError, match="checkpoint is required"):
        ImageClassifier(num_classes=10, teacher={"name": "test_resnet"})
    # the teacher is built for fitting only, so what would fail then fails at construction
    with pytest.raises(ValueError, match="'efficientformerv2_s9' is neither an EfficientFormerV2 variant"):
        ImageClassifier(num_classes=10, teacher={"name": "efficientformerv2_s9", "checkpoint": "t.pth"})
    with pytest.raises(ValueError, match="does not exist: give the local file"):
        ImageClassifier(num_classes=10, teacher={"name": "test_resnet", "checkpoint": str(tmp_path / "gone.pth")})


def test_the_fit_summary_counts_the_flops_at_the_training_size():
    """Lightning's model summary (printed by `fit`) gets the model's FLOPs from an example input at
    the training size: torch's FLOP count of the same model, not 0."""
    from lightning.pytorch.utilities.model_summary import ModelSummary
    from torch.utils.flop_counter import FlopCounterMode

    from conftest import TINY_ARCH
    classifier = ImageClassifier(arch=TINY_ARCH, num_classes=3, img_size=32)
    assert tuple(classifier.example_input_array.shape) == (1, 3, 32, 32)
    summary = ModelSummary(classifier, max_depth=1)
    assert classifier.model.training  # the summary's forward left the model's mode as it was
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        classifier.model.eval()(torch.zeros(1, 3, 32, 32))
    assert summary.total_flops == counter.get_total_flops() > 0
