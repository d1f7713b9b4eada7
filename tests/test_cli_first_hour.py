"""The first hour of a new user (issue 26): the documented commands as a newcomer runs them on a
CPU machine with the toy data.

- A config whose trainer this machine cannot run (the paper config: 8 GPUs, 16-mixed) is one
  line and exit status 2 that says what to pass, for both the classification and the supernet CLI.
- `fit` prints its learning rate once and ends with its best metric and where its checkpoints
  went; `supernet fit` ends with its metrics and its checkpoint folder.
- Known third-party warnings stay out of the output unless EFV2_VERBOSE=1.
- What the search writes (search.json, searched.yaml) and an inline JSON dict are what
  tools/model_profile.py --arch reads, and it counts what the search reported; tools/search.py
  is shrunk from the command line and says why it stopped once.
- tools/model_profile.py prints the deploy-form figures (tests/test_profile.py).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from classification.run_folder import exit_status
from classification.toy_data import make_toy_classification
from conftest import REFERENCE_PARAMS, synthetic_table
from tool_runner import run_tool, tiny_cli_options

ROOT = Path(__file__).resolve().parents[1]
PAPER_S0 = ROOT / "configs/classification/efficientformerv2_s0.yaml"
TOY = ROOT / "configs/classification/toy.yaml"
SUPERNET_PAPER = ROOT / "configs/search/supernet_imagenet.yaml"
SUPERNET_TOY = ROOT / "configs/search/supernet_toy.yaml"
NUM_CLASSES = 10   # the toy set's
TINY = tiny_cli_options(epochs=2)


pytestmark = pytest.mark.usefixtures("one_thread_in_tmp")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=2, val_per_class=1, size=32)


def _run(entry, args: list[str]) -> tuple[int, str, str, list[str]]:
    """A command line's console-script run in this process: (status, stdout, stderr, warnings shown)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")   # args passed in-process
        status = exit_status(lambda: entry(args), "prog")
    return status, out.getvalue(), err.getvalue(), [str(w.message) for w in caught]


def _classification(args):
    from classification.__main__ import cli

    return cli(args)


def _supernet(args):
    from classification.supernet import main

    return main(args)


def _noise(messages: list[str]) -> list[str]:
    """The messages that are known third-party noise (`classification.run_folder.NOISE`)."""
    from classification.run_folder import NOISE

    return [m for m in messages if any(re.match(p, m) for p in NOISE)]


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


# --------------------------------------------------------------------------------------------
# 1. trainer settings the machine lacks
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="the paper's trainer runs where there are GPUs")
@pytest.mark.parametrize("entry, config, cpu_config", [
    (_classification, PAPER_S0, "configs/classification/toy.yaml"),
    (_supernet, SUPERNET_PAPER, "configs/search/supernet_toy.yaml"),
], ids=["classification", "supernet"])
def test_paper_config_on_a_cpu_is_one_line_saying_what_to_pass(toy, entry, config, cpu_config):
    status, out, err, _ = _run(entry, ["fit", "--config", str(config), "--data.root", str(toy)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    line = lines[0]
    assert line.startswith("prog: error: the trainer cannot be built"), line
    assert "accelerator gpu, devices 8" in line and "no GPU" in line
    assert "--trainer.accelerator cpu --trainer.devices 1" in line and cpu_config in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU strategy runs where there are GPUs")
@pytest.mark.parametrize("flags, given, advice", [
    (["--trainer.accelerator", "mps"], "accelerator mps", "pass --trainer.accelerator cpu --trainer.devices 1"),
    (["--trainer.strategy", "fsdp"], "strategy fsdp", "pass --trainer.strategy auto"),
], ids=["accelerator", "strategy"])
def test_a_trainer_setting_the_machine_lacks_names_the_flag_to_pass(toy, flags, given, advice):
    status, _, err, _ = _run(_classification, ["fit", "--config", str(TOY), "--data.root", str(toy), *flags])
    assert status == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert given in err and advice in err, err


# --------------------------------------------------------------------------------------------
# 6. what fit and supernet fit say, and what they keep quiet
# --------------------------------------------------------------------------------------------
def test_fit_says_its_learning_rate_once_and_ends_with_its_best_metric_and_checkpoints(toy):
    status, out, err, shown = _run(_classification, ["fit", "--config", str(TOY), "--data.root", str(toy),
                                                     "--model.lr", "null", *TINY])
    assert status == 0, err[-3000:]
    lr_lines = [line for line in out.splitlines() if line.startswith("fit: learning rate")]
    # base_lr 1e-3 x 8 images per step / 1024
    assert lr_lines == ["fit: learning rate 7.81e-06 = base_lr 0.001 x global batch 8 / 1024; the global batch is "
                        "8 per device x 1 device x 1 accumulated"], lr_lines
    last = _last_line(out)
    assert re.fullmatch(r"fit: best val/top1 \d+\.\d% at epoch [01]; checkpoints in runs/cls_toy/checkpoints "
                        r"\(best: best-00[01]\.ckpt\)", last), last
    assert sorted(p.name for p in Path("runs/cls_toy/checkpoints").iterdir())[-1] == "last.ckpt"
    # none of the known third-party warnings is shown (this run draws several: see the next test)
    assert not _noise(shown), shown


def test_third_party_warnings_show_with_efv2_verbose(toy, monkeypatch):
    monkeypatch.setenv("EFV2_VERBOSE", "1")
    status, out, err, shown = _run(_classification, ["fit", "--config", str(TOY), "--data.root", str(toy), *TINY,
                                                     "--trainer.max_epochs", "1"])
    assert status == 0, err[-3000:]
    assert _noise(shown), shown
    assert _last_line(out).startswith("fit: best val/top1")


def test_supernet_fit_ends_with_its_metrics_and_checkpoint_folder(toy):
    status, out, err, _ = _run(_supernet, ["fit", "--config", str(SUPERNET_TOY), "--data.root", str(toy), *TINY,
                                           "--trainer.max_epochs", "1", "--trainer.default_root_dir", "run",
                                           "--checkpoint.dirpath", "run/checkpoints"])
    assert status == 0, err[-3000:]
    last = _last_line(out)
    assert re.fullmatch(r"supernet fit: val/top1_largest \d+\.\d%, val/top1_smallest \d+\.\d% at epoch 0 "
                        r"\(the last\); checkpoints in run/checkpoints", last), last
    assert Path("run/checkpoints/last.ckpt").is_file()


# --------------------------------------------------------------------------------------------
# 5. one searched network, read by every tool from what the search writes
# --------------------------------------------------------------------------------------------
def _search_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """A SupernetModule-like checkpoint of a tiny untrained supernet at 32 px (10 classes, no
    distillation head), a synthetic latency table of its space, and a small search config."""
    from backbones.supernet import EfficientFormerV2Supernet, SearchSpace

    space = SearchSpace(widths=((8, 16), (16,), (16, 24), (24, 32)), depths=(1, 1, 2, 2), expansions=(2, 4),
                        stem_widths=(8,))
    net = EfficientFormerV2Supernet(space, num_classes=NUM_CLASSES, img_size=32, distillation=False)
    checkpoint = folder / "supernet.ckpt"
    torch.save({"state_dict": {f"supernet.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"space": space.to_dict(), "num_classes": NUM_CLASSES, "img_size": 32,
                                     "distillation": False}}, checkpoint)
    lut = synthetic_table(space, 32, NUM_CLASSES, distillation=False).save(folder / "lut.json")
    config = folder / "search.yaml"
    config.write_text(yaml.safe_dump({"search": {"target": {"mes_factor": 1.5}, "batch_size": 10, "calib_batches": 3},
                                      "random": {"count": 5, "tolerance": 0.5}, "base_config": str(TOY)}))
    return checkpoint, lut, config


@pytest.fixture(scope="module")
def searched(toy, tmp_path_factory) -> Path:
    """tools/search.py shrunk from the command line: one step, ten images, one random network."""
    folder = tmp_path_factory.mktemp("search")
    checkpoint, lut, config = _search_inputs(folder)
    r = run_tool("search", "--checkpoint", checkpoint, "--data", toy, "--lut", lut, "--config", config,
                 "--out", folder / "out", "--max-steps", "1", "--max-images", "10", "--calib-batches", "1",
                 "--random-count", "1", cwd=folder)
    assert r.returncode == 0, r.stderr[-3000:]
    folder.joinpath("search_stdout.txt").write_text(r.stdout)
    return folder / "out"


def test_search_tool_is_shrunk_from_the_command_line_and_says_why_it_stopped_once(searched):
    stdout = (searched.parent / "search_stdout.txt").read_text()
    assert "search: step limit reached (max_steps 1); 1 steps" in stdout, stdout
    assert "after 1 steps after" not in stdout and "steps after" not in stdout
    log = json.loads((searched / "search.json").read_text())
    assert log["settings"]["search"]["max_steps"] == 1 and log["settings"]["search"]["max_images"] == 10
    assert log["settings"]["search"]["calib_batches"] == 1 and log["settings"]["random"]["count"] == 1
    assert len(json.loads((searched / "random.json").read_text())["at_budget"]) == 1
    last = _last_line(stdout)
    assert last.startswith("search: searched network in") and "search.json" in last and "searched.yaml" in last, last


def test_search_tool_refuses_a_zero_step_count(tmp_path):
    r = run_tool("search", "--checkpoint", "x.ckpt", "--data", ".", "--lut", "l.json", "--max-steps", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--max-steps" in r.stderr, r.stderr


@pytest.mark.parametrize("written", ["search.json", "searched.yaml"])
def test_profile_counts_what_the_search_reported(searched, written):
    log = json.loads((searched / "search.json").read_text())
    reported = log["steps"][-1]["params"]
    r = run_tool("model_profile", "--arch", searched / written)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"params {reported:,} " in r.stdout and "at 32x32" in r.stdout, r.stdout
    assert "32px, 10 classes, no distillation head" in r.stdout and not r.stderr


def test_profile_takes_an_inline_arch_dict():
    r = run_tool("model_profile", "--arch", '{"base": "s0"}')   # built as released: 224, 1000 classes, distillation
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"params {REFERENCE_PARAMS['efficientformerv2_s0']:,} " in r.stdout, r.stdout
    bad = run_tool("model_profile", "--arch", '{"base": "s0", "attention": [0, 0, 2')
    assert bad.returncode == 2 and "is not JSON" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_profile_reads_a_classification_config_as_its_training_builds_the_network():
    """A variant config (an overlay including the recipe) names its model; without a teacher the
    training builds no distillation head, and the count says so."""
    from_config = run_tool("model_profile", "--arch", ROOT / "configs/classification/efficientformerv2_s1.yaml")
    by_name = run_tool("model_profile", "--model", "efficientformerv2_s1", "--no-distillation")
    assert from_config.returncode == by_name.returncode == 0, from_config.stderr + by_name.stderr
    figures = re.search(r"params [\d,]+ \(deploy form [\d,]+\)", by_name.stdout).group()
    assert figures in from_config.stdout and "no distillation head" in from_config.stdout, from_config.stdout


# --------------------------------------------------------------------------------------------
# 7. the deploy-form figures come from the tool: tests/test_profile.py (profile() of the four
#    variants against DEPLOY_PARAMS, and the tool's line for S0)
# --------------------------------------------------------------------------------------------
