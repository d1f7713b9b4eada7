"""Training through the CLI on toy data: a short fit whose checkpoints load with the backbone's
loader, predictions written to a CSV file, run folders that follow default_root_dir and are never
overwritten silently (resume after a kill: tests/test_classification_resume.py), DDP on two CPU processes,
bad images during training, and checkpoints of other classes or unreadable ones refused."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from backbones import CheckpointError, efficientformerv2_s0, load_checkpoint
from classification.__main__ import cli, main
from classification.data import ImageNetDataModule
from classification.predictions import PredictionWriter
from classification.run_folder import RunFolderError
from classification.toy_data import CLASSES, make_toy_classification
from imagefolder import load_rgb
from tool_runner import run_classification

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "classification" / "toy.yaml"


class RecordRank(Callback):
    """Writes what each DDP rank saw (samples, lr, weights checksum) to OUT/rank<k>.json."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.targets: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.targets += batch[1].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        sampler.set_epoch(0)
        params = torch.cat([p.detach().flatten() for p in pl_module.model.parameters()])
        record = {"epoch0": [i for i, _, _ in sampler], "rank": trainer.global_rank, "world": trainer.world_size, "targets": self.targets,
                  "lr_peak": trainer.lr_scheduler_configs[0].scheduler.base_values[0],
                  "checksum": float(params.double().sum()), "l2": float(params.double().norm()),
                  "val_top1": float(trainer.callback_metrics["val/top1"])}
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run fastest on one thread


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=6, val_per_class=2, size=32)


def _args(root: Path, *extra: str) -> list[str]:
    """CLI arguments for the toy config on `root`; run in a temporary working directory, where the
    config's run folder runs/cls_toy (logs and checkpoints) then lands."""
    return ["--config", str(TOY), "--data.root", str(root), "--data.img_size", "32", "--data.batch_size", "4",
            "--data.num_workers", "0", "--data.persistent_workers", "false", *extra]


CKPT = Path("runs/cls_toy/checkpoints")


def _fit(root: Path, *extra: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cli(["fit", *_args(root, *extra)])


@pytest.fixture(scope="module")
def fitted(toy, tmp_path_factory):
    """One short fit (1 epoch, 3 batches) in its own folder, shared by the tests that only need a
    trained run and its checkpoint: (the CLI object, the folder the run was started in)."""
    folder = tmp_path_factory.mktemp("fitted")
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.chdir(folder)
    try:
        c = _fit(toy, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return c, folder


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_cli_fit_logs_metrics_and_checkpoints_load_safely(fitted):
    c, folder = fitted
    ckpt = folder / CKPT
    metrics = c.trainer.callback_metrics
    assert {"val/top1", "val/top5", "val/loss", "train/loss"} <= set(metrics)
    assert 0 <= float(metrics["val/top1"]) <= float(metrics["val/top5"]) <= 1
    assert sorted(p.name for p in ckpt.iterdir()) == ["best-000.ckpt", "last.ckpt"]
    raw = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["num_classes"] == 10 and raw["class_names"] == sorted(raw["class_names"])
    model = efficientformerv2_s0(num_classes=10, distillation=False, img_size=32)
    assert load_checkpoint(model, ckpt / "last.ckpt").ok
    for k, v in c.model.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    # TensorBoard and CSV logs
    assert list(folder.rglob("events.out.tfevents.*")) and list(folder.rglob("metrics.csv"))


def test_validate_test_predict_subcommands(toy, fitted):
    ckpt = str(fitted[1] / CKPT / "last.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = cli(["validate", *_args(toy), "--ckpt_path", ckpt])
        t = cli(["test", *_args(toy), "--ckpt_path", ckpt])
        p = cli(["predict", *_args(toy), "--ckpt_path", ckpt, "--trainer.callbacks", "[]", "--trainer.logger", "false"])
    assert float(v.trainer.callback_metrics["val/top1"]) == float(t.trainer.callback_metrics["test/top1"])
    preds = p.trainer.predict_loop.predictions
    assert sum(len(b["classes"]) for b in preds) == sum(len(b["paths"]) for b in preds) == 20
    assert all(b["classes"].shape[1] == b["scores"].shape[1] == 5 for b in preds)
    writer = next(c for c in p.trainer.callbacks if isinstance(c, PredictionWriter))
    assert writer.path.resolve() == Path("runs/cls_toy/predictions.csv").resolve()  # no logger: the run folder
    assert writer.rows == 20 and len(writer.path.read_text().splitlines()) == 21


def test_predict_writes_top_k_csv_and_says_where(toy, fitted):
    """End to end: `python -m classification predict --ckpt_path C` writes, per image, its path and
    the top-5 class names and scores, and its last line of output names the file."""
    ckpt = fitted[1] / CKPT / "last.ckpt"
    paths = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    r = subprocess.run([sys.executable, "-m", "classification", "predict", *_args(toy), "--ckpt_path", str(ckpt)],
                       env=dict(os.environ, PYTHONPATH=paths, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    last = [line for line in r.stdout.splitlines() if line.strip()][-1]
    m = re.fullmatch(r"predict: 20 images, top classes and scores written to (\S+)", last)
    assert m, last
    out = Path(m.group(1))
    assert out.parent.parent == Path("runs/cls_toy/tb") and out.name == "predictions.csv"  # the run's log folder
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    tops = [f"top{i}" for i in range(1, 6)]
    assert list(rows[0]) == ["path", "target", *[c for t in tops for c in (t, f"{t}_score")]]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in (toy / "val").rglob("*.JPEG"))
    for row in rows:
        assert row["target"] == Path(row["path"]).parent.name
        names, scores = [row[t] for t in tops], [float(row[f"{t}_score"]) for t in tops]
        assert set(names) <= set(CLASSES) and len(set(names)) == 5
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
    # the scores are the trained model's softmax on the evaluation transform of each image
    model = efficientformerv2_s0(num_classes=10, distillation=False, img_size=32)
    load_checkpoint(model, ckpt)
    data = ImageNetDataModule(toy, img_size=32, crop_pct=0.9, interpolation="bicubic", num_workers=0)
    x = torch.stack([data.eval_transform()(load_rgb(row["path"])) for row in rows[:4]])
    with torch.no_grad():
        probs = model.eval()(x).softmax(1)
    for row, p in zip(rows, probs):
        scores, classes = p.topk(5)
        assert [row[t] for t in tops] == [sorted(CLASSES)[i] for i in classes.tolist()]
        assert [float(row[f"{t}_score"]) for t in tops] == pytest.approx(scores.tolist(), abs=2e-6)


def test_runs_follow_default_root_dir_and_never_overwrite(toy):
    short = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")
    for run in ("run_a", "run_b"):
        _fit(toy, *short, "--trainer.default_root_dir", run)
        assert sorted(p.name for p in Path(run, "checkpoints").iterdir()) == ["best-000.ckpt", "last.ckpt"]
        assert list(Path(run, "tb", "version_0").glob("events.out.tfevents.*"))
        assert Path(run, "tb", "version_0", "config.yaml").is_file()
        assert Path(run, "csv", "version_0", "metrics.csv").is_file()
    assert not Path("runs").exists()  # the config's own run folder (runs/cls_toy) was not touched
    first = Path("run_a/checkpoints/last.ckpt").read_bytes()
    with pytest.raises(RunFolderError, match=r"run_a/checkpoints already holds checkpoints of an earlier run "
                                             r"\(best-000.ckpt, last.ckpt\).*--ckpt_path last.*--trainer.default_root_dir"):
        _fit(toy, *short, "--trainer.default_root_dir", "run_a")
    assert Path("run_a/checkpoints/last.ckpt").read_bytes() == first
    # resuming the run in its own folder is allowed, and finds its last.ckpt there
    resumed = _fit(toy, *short[2:], "--trainer.max_epochs", "2", "--trainer.default_root_dir", "run_a",
                   "--ckpt_path", "last")
    assert resumed.trainer.global_step == 2
    assert torch.load("run_a/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2


def test_cli_errors_are_one_line(toy, tmp_path, capsys):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint: the file is a text file"):
        cli(["validate", *_args(toy), "--ckpt_path", "notes.ckpt"])
    with pytest.raises(CheckpointError, match="does not exist"):
        cli(["validate", *_args(toy), "--ckpt_path", "missing.ckpt"])
    with pytest.raises(CheckpointError, match="download the checkpoint first"):
        cli(["validate", *_args(toy), "--ckpt_path", "https://example.com/model.ckpt"])
    with pytest.raises(CheckpointError, match="does not exist"):  # a local file, whatever its name
        cli(["validate", *_args(toy), "--ckpt_path", "registry_best.ckpt"])
    # the command line's entry point (`python -m classification` runs it; the runs below that
    # need a process of their own start it in one), in this process
    code = main(["fit", *_args(tmp_path / "no_such_data")])
    r = subprocess.CompletedProcess([], code, *capsys.readouterr())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"python -m classification: error: data root {str(tmp_path / 'no_such_data')!r} does not exist")


def test_ddp_two_cpu_processes(toy, tmp_path):
    r = run_classification(["fit", *_args(toy, "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
                                   "--trainer.devices", "2", "--trainer.max_epochs", "2",
                                   "--trainer.callbacks+=test_classification_training.RecordRank",
                                   "--trainer.callbacks.out", str(tmp_path))], timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2)
    # each rank trains on its own half of an epoch: together they cover the whole set once
    assert len(r0["epoch0"]) == len(r1["epoch0"]) == 30
    assert sorted(r0["epoch0"] + r1["epoch0"]) == list(range(60))
    assert len(r0["targets"]) == len(r1["targets"]) == 2 * 28  # 7 batches of 4 per epoch
    # gradients were averaged: both ranks hold the same weights; lr from the toy config (absolute)
    assert r0["checksum"] == pytest.approx(r1["checksum"], rel=1e-6) and r0["l2"] == pytest.approx(r1["l2"], rel=1e-6)
    assert r0["lr_peak"] == r1["lr_peak"] == pytest.approx(2.0e-3)
    assert r0["val_top1"] == r1["val_top1"]


def test_ddp_lr_follows_the_global_batch(toy):
    from classification.module import ImageClassifier
    model = ImageClassifier(num_classes=10, batch_size=64, base_lr=1e-3, lr_base_batch=1024)

    class _Trainer:
        world_size, accumulate_grad_batches = 16, 1
    model._trainer = _Trainer()
    assert model.global_batch_size() == 1024 and model.learning_rate() == pytest.approx(1e-3)
    model._trainer = None


def test_training_goes_on_past_bad_images(tmp_path):
    root = make_toy_classification(tmp_path / "bad", train_per_class=2, val_per_class=1, size=32)
    folder = root / "train" / "star"
    good = next(folder.iterdir()).read_bytes()
    (folder / "zero.JPEG").write_bytes(b"")
    (folder / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    (root / "val" / "dots" / "broken.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(RuntimeWarning, match="skipped unreadable image") as record:
        c = cli(["fit", *_args(root, "--trainer.max_epochs", "1")])
    named = " ".join(str(w.message) for w in record)
    for p in (folder / "zero.JPEG", folder / "truncated.JPEG", root / "val" / "dots" / "broken.JPEG"):
        assert str(p) in named
    assert c.datamodule.num_skipped >= 3 and c.trainer.global_step > 0
    assert float(c.trainer.callback_metrics["data/skipped_images"]) >= 2


def test_checkpoint_of_other_classes_is_refused(toy, fitted, tmp_path):
    ckpt = str(fitted[1] / CKPT / "last.ckpt")
    fewer = tmp_path / "fewer"
    shutil.copytree(toy, fewer)
    for split in ("train", "val"):
        shutil.rmtree(fewer / split / "star")
    with pytest.raises(CheckpointError, match="10 classes but the model has 9.*--model.pretrained"):
        cli(["validate", *_args(fewer), "--ckpt_path", ckpt])
    renamed = tmp_path / "renamed"
    shutil.copytree(toy, renamed)
    for split in ("train", "val"):
        (renamed / split / "star").rename(renamed / split / "zstar")
    with pytest.raises(CheckpointError, match="classes do not match"):
        cli(["validate", *_args(renamed), "--ckpt_path", ckpt])
