"""Resuming a classification run from the checkpoint written at an epoch's end
(`python -m classification fit ... --ckpt_path last`), with a loader that has workers."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

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


def test_resume_after_a_kill_at_an_epoch_end(toy, tmp_path):
    # last.ckpt is written at every epoch end, even when no top-k checkpoint is (save_top_k 0), and
    # the resumed run trains the next epoch's batches: the weights of an uninterrupted run
    full = _fit(tmp_path / "full", *_args(toy))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _fit(tmp_path / "killed", *_args(toy, "--trainer.callbacks+=tool_runner.KillAtStep",
                                              "--trainer.callbacks.step", "15"))
    assert killed.returncode == 17, killed.stderr[-3000:]
    state = _last(tmp_path / "killed")
    assert (state["epoch"], state["global_step"]) == (0, 15)  # written at epoch 0's end
    resumed = _fit(tmp_path / "killed", *_args(toy, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _last(tmp_path / "full"), _last(tmp_path / "killed")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 30)
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), rtol=1e-4, atol=1e-6), k
