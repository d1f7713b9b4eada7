"""Resuming a classification run after a kill (`python -m classification fit ... --ckpt_path last`)
ends with the weights of an uninterrupted run: killed at an epoch's end with a loader that has
workers, and killed mid-epoch (a step checkpoint) then resumed in this process. Both compare with
one reference fit: augmentation is seeded per (seed, epoch, sample), so the loader's workers do not
change the weights (`classification.data.SeededSampler`)."""
from __future__ import annotations

import csv
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from classification.__main__ import cli
from classification.toy_data import make_toy_classification
from tool_runner import run_classification

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "classification" / "toy.yaml"
CKPT = Path("runs/cls_toy/checkpoints")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=6, val_per_class=2, size=32)


def _args(root: Path, *extra: str) -> list[str]:
    # 60 images / batch 4 = 15 steps per epoch; one loader worker, which fetches as soon as it exists
    return ["--config", str(TOY), "--data.root", str(root), "--data.img_size", "32", "--data.batch_size", "4",
            "--data.num_workers", "1", "--data.persistent_workers", "true", "--trainer.max_epochs", "2",
            "--trainer.limit_val_batches", "2", "--checkpoint.save_top_k", "0", *extra]


def _fit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # each run in a fresh process: loader workers are forked from a clean interpreter, and the
    # test process keeps its working directory
    cwd.mkdir(parents=True, exist_ok=True)
    return run_classification(["fit", *args], cwd=cwd, timeout=600)


def _last(cwd: Path) -> dict:
    return torch.load(cwd / CKPT / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> Path:
    """The uninterrupted run (2 epochs, 30 steps) both kill tests compare with: its folder."""
    folder = tmp_path_factory.mktemp("full")
    full = _fit(folder, *_args(toy))
    assert full.returncode == 0, full.stderr[-3000:]
    return folder


def _val_top1(folder: Path) -> float:
    """The last val/top1 the run's CSV log holds."""
    (metrics,) = (folder / "runs/cls_toy/csv").glob("version_*/metrics.csv")
    with metrics.open(newline="") as f:
        return [float(row["val/top1"]) for row in csv.DictReader(f) if row.get("val/top1")][-1]


def test_resume_after_a_kill_at_an_epoch_end(toy, reference, tmp_path):
    # last.ckpt is written at every epoch end, even when no top-k checkpoint is (save_top_k 0), and
    # the resumed run trains the next epoch's batches: the weights of an uninterrupted run
    killed = _fit(tmp_path / "killed", *_args(toy, "--trainer.callbacks+=tool_runner.KillAtStep",
                                              "--trainer.callbacks.step", "15"))
    assert killed.returncode == 17, killed.stderr[-3000:]
    state = _last(tmp_path / "killed")
    assert (state["epoch"], state["global_step"]) == (0, 15)  # written at epoch 0's end
    resumed = _fit(tmp_path / "killed", *_args(toy, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _last(reference), _last(tmp_path / "killed")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 30)
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), rtol=1e-4, atol=1e-6), k


def _args_in_process(root: Path, *extra: str) -> list[str]:
    """The toy config on `root` without loader workers (runs in this process)."""
    return ["--config", str(TOY), "--data.root", str(root), "--data.img_size", "32", "--data.batch_size", "4",
            "--data.num_workers", "0", "--data.persistent_workers", "false", *extra]


def test_resume_after_kill_equals_uninterrupted(toy, reference, tmp_path, monkeypatch):
    # 60 images / batch 4 = 15 steps per epoch, 2 epochs; killed in epoch 1 at step 23, last saved at 20
    step_ckpt = ["--trainer.max_epochs", "2", "--trainer.limit_val_batches", "2",
                 "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                 "--trainer.callbacks.dirpath", str(CKPT), "--trainer.callbacks.every_n_train_steps", "5",
                 "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.save_last", "true",
                 "--trainer.callbacks.enable_version_counter", "false"]
    killed = tmp_path / "killed"
    killed.mkdir()
    monkeypatch.chdir(killed)
    r = run_classification(["fit", *_args_in_process(toy, *step_ckpt, "--trainer.callbacks+=tool_runner.KillAtStep",
                                                     "--trainer.callbacks.step", "23")])
    assert r.returncode == 17, r.stderr[-3000:]
    state = torch.load(CKPT / "last.ckpt", map_location="cpu", weights_only=True)
    assert (state["global_step"], state["epoch"]) == (20, 1)  # mid-epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = cli(["fit", *_args_in_process(toy, *step_ckpt, "--ckpt_path", "last")])
    full = _last(reference)
    assert resumed.trainer.global_step == full["global_step"] == 30
    a, b = full["state_dict"], resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6), k
    assert float(resumed.trainer.callback_metrics["val/top1"]) == _val_top1(reference)
