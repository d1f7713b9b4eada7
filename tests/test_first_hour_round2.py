"""The first hour, round two: the documented commands kept to their word on a loaded CPU.

- CPU threads are chosen for the machine (`backbones.threads`): usable cores less the loader
  workers, `EFV2_THREADS` / `OMP_NUM_THREADS` / an option winning.
- Bad input is one line and exit status 2 with nothing written: a predict folder of unreadable
  files, a negative batch size or epoch count (no run folder made), an export path with another
  format's suffix, a missing config file or a misspelt config key (with a close match).
- A checkpoint knows its model: `backbones.model_from_checkpoint` builds it from the file alone
  (class count, distillation head, input size, class names), a mismatch names the argument to
  pass, `predict_images` and the exports use the checkpoint's class names.
- `predict --ckpt_path CKPT` needs nothing else: the fit's settings come from the checkpoint.
- The mm tools' console: progress and warnings only, then one summary line.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch

from backbones import EfficientFormerV2, create_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from backbones.checkpoint import CheckpointError
from backbones.model_info import checkpoint_info, set_class_names
from backbones.threads import THREADS_ENV, choose_threads
from classification.run_folder import close_match, exit_status
from classification.toy_data import make_toy_classification
from conftest import TINY_ARCH
from tool_runner import assert_one_line_error, run_tool, tiny_cli_options

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs/classification/toy.yaml"
TINY = tiny_cli_options(epochs=1)


pytestmark = pytest.mark.usefixtures("one_thread_in_tmp")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=2, val_per_class=1, size=32)


def _cli(args: list[str]) -> tuple[int, str, str]:
    """`python -m classification ARGS` in this process: (status, stdout, stderr)."""
    from classification.__main__ import cli

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        try:
            status = exit_status(lambda: cli(args), "python -m classification")
        except SystemExit as e:  # the argument parser's own exit
            status = e.code
    return status, out.getvalue(), err.getvalue()


FIT_OUTPUT: list[str] = []  # what the fixture's fit printed


@pytest.fixture(scope="module")
def fitted(toy, tmp_path_factory) -> Path:
    """A toy fit (S0 at 32 px, 10 named classes, no teacher): its last.ckpt."""
    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(THREADS_ENV, "1")
        # a process says its threads once per count: as in a fresh `python -m classification`, it has not yet
        mp.setattr("backbones.threads._announced", None)
        status, out, err = _cli(["fit", "--config", str(TOY), "--data.root", str(toy),
                                 "--trainer.default_root_dir", str(run), *TINY])
    assert status == 0, err[-3000:]
    FIT_OUTPUT.append(out)
    return run / "checkpoints" / "last.ckpt"


# --------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("affinity, workers, processes, environ, requested, want, source", [
    ({0, 1}, 1, 1, {}, None, 1, "cores"),                           # 2 cores, 1 worker
    (set(range(8)), 2, 1, {}, None, 6, "cores"),
    (set(range(8)), 1, 2, {}, None, 3, "cores"),                    # two processes share the cores
    ({0, 1}, 4, 1, {}, None, 1, "cores"),                           # never below one
    ({3}, 0, 1, {}, None, 1, "cores"),
    (set(range(8)), 2, 1, {"OMP_NUM_THREADS": "2"}, None, 2, "OMP_NUM_THREADS"),
    (set(range(8)), 2, 1, {"OMP_NUM_THREADS": "2", THREADS_ENV: "5"}, None, 5, THREADS_ENV),
    (set(range(8)), 2, 1, {THREADS_ENV: "5"}, 3, 3, "option"),
])
def test_threads_are_the_usable_cores_less_the_workers_unless_asked(affinity, workers, processes, environ,
                                                                    requested, want, source):
    choice = choose_threads(workers, requested, processes, affinity=affinity, environ=environ, busy=0)
    assert (choice.threads, choice.source, choice.cores) == (want, source, len(affinity))
    line = choice.line("--threads N")
    assert line.startswith(f"threads: {want} intra-op (") and "EFV2_THREADS=N or --threads N" in line


@pytest.mark.parametrize("affinity, workers, busy, want", [
    ({0, 1}, 0, 1, 1),     # two cores, one busy with other work: one thread, not two waiting on each other
    ({0, 1}, 1, 1, 1),     # never below one
    (set(range(8)), 2, 3, 3),
    ({0, 1}, 0, 2, 1),
])
def test_cores_busy_with_other_work_are_left_to_it(affinity, workers, busy, want):
    choice = choose_threads(workers, affinity=affinity, environ={}, busy=busy)
    assert (choice.threads, choice.busy, choice.source) == (want, busy, "cores")
    assert f"{len(affinity)} usable cores, {busy} busy with other work, {workers} loader worker" in choice.line()


def test_a_core_kept_busy_by_another_process_is_measured(monkeypatch):
    from backbones import threads
    from deploy.durations import busy_core
    monkeypatch.setattr(threads, "_busy_sampled", None)
    with busy_core() as core:
        assert threads.busy_cores({core}, sample_s=0.3) == 1      # the spinner holds that core
        assert threads.busy_cores({core}, sample_s=0.3) == 1      # asked again: the same answer, not sampled
        assert threads._busy_sampled[1] == frozenset({core})
    monkeypatch.setattr(threads, "_cpu_ticks", lambda cores: None)  # no /proc/stat (not Linux)
    monkeypatch.setattr(threads, "_busy_sampled", None)
    assert threads.busy_cores({0}) == 0


def test_a_thread_count_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="EFV2_THREADS"):
        choose_threads(1, affinity={0, 1}, environ={THREADS_ENV: "zero"})


def test_the_cli_says_its_threads_in_one_line(fitted):
    lines = [line for line in FIT_OUTPUT[0].splitlines() if line.startswith("threads:")]
    assert lines == ["threads: 1 intra-op (from EFV2_THREADS; EFV2_THREADS=N to change)"], lines
    assert torch.get_num_threads() == 1


# --------------------------------------------------------------------------------------------
# promises: one line, exit status 2, nothing written
# --------------------------------------------------------------------------------------------
def test_predict_on_unreadable_files_is_one_line_and_writes_nothing(toy, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.jpg", "b.png"):
        (bad / name).write_bytes(b"not an image at all")
    status, out, err = _cli(["predict", "--config", str(TOY), "--data.root", str(toy), *TINY,
                             "--data.predict_dir", str(bad), "--trainer.default_root_dir", str(tmp_path / "run")])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("python -m classification: error: none of the 2 images to predict on could be read")
    assert not list(tmp_path.rglob("predictions*.csv"))


def test_an_unreadable_image_is_one_warning_line_without_a_source_line(tmp_path):
    from imagefolder import ImageFolderDataset, UnreadableImageWarning
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.warns(UnreadableImageWarning) as caught:
        assert ImageFolderDataset([(str(bad), 0)])[0] is None
    (w,) = caught
    shown = warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
    assert shown == f"warning: skipped unreadable image {bad}: UnidentifiedImageError: cannot identify image file {str(bad)!r}\n"
    assert shown.count("\n") == 1 and "warnings.warn" not in shown
    # other warnings keep Python's format (file, line and source)
    assert "UserWarning" in warnings.formatwarning("x", UserWarning, "f.py", 3)


@pytest.mark.parametrize("flags, fragment", [
    (["--data.batch_size", "-4"], "--data.batch_size must be a positive integer, got -4"),
    (["--trainer.max_epochs", "-5"], "--trainer settings: `max_epochs` must be a non-negative integer"),
], ids=["batch_size", "max_epochs"])
def test_invalid_settings_are_refused_before_any_run_folder_is_made(toy, tmp_path, flags, fragment):
    run = tmp_path / "run"
    status, _, err = _cli(["fit", "--config", str(TOY), "--data.root", str(toy), *TINY,
                           "--trainer.default_root_dir", str(run), *flags])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and fragment in lines[0], err[-3000:]
    assert not run.exists()


def test_a_misspelt_config_key_is_one_line_with_the_program_and_a_close_match(toy, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(TOY.read_text().replace("model_name:", "model_nam:"))
    status, out, err = _cli(["fit", "--config", str(config), "--data.root", str(toy)])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith("python -m classification: error: ") and "model.model_nam" in lines[0]
    assert "did you mean model.model_name?" in lines[0] and "usage" not in err.lower()


def test_a_missing_config_file_is_one_line():
    status, _, err = _cli(["fit", "--config", "missing.yaml"])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "missing.yaml" in lines[0], err
    assert lines[0].startswith("python -m classification: error: ") and "did you mean" not in lines[0]


def test_close_match_names_the_nearest_key():
    keys = ["model.model_name", "model.num_classes", "data.batch_size"]
    assert close_match("does not accept option 'data.bach_size'", keys) == "; did you mean data.batch_size?"
    assert close_match("does not accept option 'zzz'", keys) == ""


def test_an_export_with_another_formats_suffix_is_one_line(tmp_path):
    out = run_tool("export", "--model", "efficientformerv2_s0", "--format", "onnx", "--out", str(tmp_path / "x.mlpackage"))
    assert_one_line_error(out, "export", "--format onnx writes a .onnx file", "x.mlpackage")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# a checkpoint knows its model
# --------------------------------------------------------------------------------------------
def test_a_model_is_built_from_its_checkpoint_alone(tmp_path):
    model = EfficientFormerV2(TINY_ARCH, num_classes=3, distillation=False, img_size=64).eval()
    set_class_names(model, ["cat", "dog", "fox"])
    path = save_checkpoint(model, tmp_path / "tiny.safetensors")
    built = model_from_checkpoint(path).eval()
    assert (built.num_classes, built.distillation, built.img_size) == (3, False, 64)
    assert built.pretrained_cfg["label_names"] == ("cat", "dog", "fox")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(built(x), model(x))
    # a model built with other heads: the error says which argument to pass
    with pytest.raises(CheckpointError, match="distillation=False"):
        load_checkpoint(EfficientFormerV2(TINY_ARCH, num_classes=3, img_size=64), path)


def test_a_lightning_checkpoint_carries_classes_heads_and_size(fitted, toy):
    info = checkpoint_info(fitted)
    classes = sorted(p.name for p in (toy / "train").iterdir())
    assert (info.model_name, info.num_classes, info.distillation, info.img_size) == \
        ("efficientformerv2_s0", 10, False, 32)
    assert info.class_names == classes
    model = create_model("efficientformerv2_s0", pretrained=str(fitted))  # nothing else passed
    assert model.num_classes == 10 and model.head_dist is None and model.img_size == 32
    assert list(model.pretrained_cfg["label_names"]) == classes

    from classification.image_files import predict_images
    out = predict_images(model, toy / "val", top_k=2)
    assert len(out) == 10 and all(p["classes"][0] in classes for p in out)


def test_predict_needs_only_the_checkpoint(fitted, toy, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for p in sorted((toy / "val").rglob("*.JPEG"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    status, out, err = _cli(["predict", "--ckpt_path", str(fitted), "--data.predict_dir", str(images)])
    assert status == 0, err[-3000:]
    assert f"predict: settings of the fit read from {fitted}" in out
    written = list(fitted.parent.parent.rglob("predictions.csv"))
    assert len(written) == 1
    rows = list(csv.DictReader(written[0].open()))
    classes = sorted(p.name for p in (toy / "train").iterdir())
    assert len(rows) == 3 and all(r["top1"] in classes for r in rows)


def test_an_export_of_a_finetuned_checkpoint_carries_its_class_names(fitted, toy):
    # the model an export builds from the checkpoint names its classes (labels file, CoreML classifier;
    # writing them is tests/test_export.py's), whatever their count
    from deploy.export import model_class_names
    from deploy.models import build_model
    model = build_model("efficientformerv2_s0", fitted)
    assert model_class_names(model, 10) == sorted(p.name for p in (toy / "train").iterdir())
    assert model_class_names(build_model("efficientformerv2_s0", num_classes=10), 10) is None


# --------------------------------------------------------------------------------------------
# quiet mm tools
# --------------------------------------------------------------------------------------------
def test_mm_console_keeps_progress_and_warnings_and_ends_with_one_summary_line():
    pytest.importorskip("mmengine")  # the openmmlab package registers its backbone with mmengine
    from openmmlab import console
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        with console.brief_console():
            handler = logging.StreamHandler(stream=sys.stdout)  # as mmengine's logger makes it, inside the run
            log = logging.getLogger("fake-mmengine")
            log.addHandler(handler)
            log.propagate = False
            log.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter("%(asctime)s - mmengine - %(levelname)s - %(message)s"))
            log.info("System environment:\n    sys.platform: linux\n    CUDA available: False")
            log.info("Epoch(train) [1][5/10]  lr: 1e-4  loss: 2.5")
            log.warning("something worth seeing")
            log.removeHandler(handler)
    lines = shown.getvalue().splitlines()
    assert len(lines) == 2 and "Epoch(train)" in lines[0] and "WARNING - something" in lines[1], lines
    metrics = {"coco/bbox_mAP": 0.3124, "coco/bbox_mAP_50": 0.5, "coco/segm_mAP": 0.25}
    assert console.summary_line("mm_test", metrics, "work_dirs/x") == \
        "mm_test: coco/bbox_mAP 0.3124, coco/segm_mAP 0.25 (full log in work_dirs/x)"
    assert console.summary_line("mm_test", {"mIoU": 41.5, "aAcc": 80.0}) == "mm_test: mIoU 41.5, aAcc 80"
