"""`--data.source`: the toy set as a `datasets` DatasetDict saved to disk (`hf:`) and as WebDataset
shards written by tools/make_shards.py (`wds:`), against the same set read as a folder: the same
images and classes, epochs of known length, each DDP rank its own shards, resume at the exact next
batch, damaged members named and skipped, bad sources one line with exit status 2."""
from __future__ import annotations

import itertools
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from classification.data import DataError, ImageNetDataModule
from classification.sources import ShardSource
from classification.toy_data import make_toy_classification
from tool_runner import run_tool

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "classification" / "toy.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    # 40 training images (4 per class), 20 validation images
    return make_toy_classification(tmp_path_factory.mktemp("toy"), train_per_class=4, val_per_class=2, size=32)


@pytest.fixture(scope="module")
def shards(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds") / "shards"
    r = run_tool("make_shards", toy, out, "--shard-size", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"make_shards: 10 classes; train with --data.source wds:{out}"
    return out


@pytest.fixture(scope="module")
def hfds(toy, tmp_path_factory) -> Path:
    """What `load_dataset("imagefolder", data_dir=ROOT)` gives, saved with `save_to_disk`."""
    import datasets
    datasets.disable_progress_bars()
    tmp = tmp_path_factory.mktemp("hf")
    datasets.load_dataset("imagefolder", data_dir=str(toy), cache_dir=str(tmp / "cache")).save_to_disk(tmp / "toy")
    return tmp / "toy"


def _dm(**kwargs) -> ImageNetDataModule:
    return ImageNetDataModule(**{"img_size": 32, "batch_size": 4, "num_workers": 0, **kwargs})


def _batches(loader) -> list[tuple[torch.Tensor, list[int]]]:
    return [(x, y.tolist()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and y == v for (x, y), (u, v) in zip(a, b))


def _images(loader) -> list[tuple[int, float]]:
    """(target, pixel sum) of every image a loader gives, sorted: which images, whatever the order."""
    return sorted((int(t), round(float(x.double().sum()), 2)) for xs, ys, *_ in loader for x, t in zip(xs, ys))


# --------------------------------------------------------------------------------------------
# wds: shards
# --------------------------------------------------------------------------------------------
def test_make_shards_writes_every_image_and_timm_info(toy, shards):
    info = json.loads((shards / "_info.json").read_text())
    assert info["label_names"] == sorted(p.name for p in (toy / "train").iterdir())
    train = info["splits"]["train"]
    assert train["num_samples"] == 40 and train["shard_lengths"] == [8] * 5
    assert train["filenames"] == [f"train-{i:06d}.tar" for i in range(5)]
    assert info["splits"]["val"]["shard_lengths"] == [8, 8, 4]
    with tarfile.open(shards / "train-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 8 * 3 and {n.split(".", 1)[1] for n in names} == {"jpeg", "cls", "json"}
    # the training images are shuffled across shards: the first shard holds several classes
    with tarfile.open(shards / "train-000000.tar") as tar:
        classes = {tar.extractfile(n).read() for n in names if n.endswith(".cls")}
    assert len(classes) > 2
    again = run_tool("make_shards", toy, shards)  # a folder with shards is never overwritten
    assert again.returncode == 2 and "already holds shards" in again.stderr


def test_wds_epochs_have_a_known_length_and_resume_at_the_exact_batch(toy, shards):
    folder = _dm(root=toy)
    loader = _dm(source=f"wds:{shards}").train_dataloader()
    assert len(loader) == 10  # 40 images, batch 4
    epoch0 = _batches(loader)
    assert len(epoch0) == 10 and all(len(y) == 4 for _, y in epoch0)
    targets = sorted(t for _, y in epoch0 for t in y)
    assert targets == sorted(t for _, t in folder._dataset("train").samples)  # every image once per epoch
    # loader workers do not change the batches: each worker decodes its own share of the same stream
    two = _dm(source=f"wds:{shards}", num_workers=2)
    assert _same(_batches(two.train_dataloader()), epoch0)
    # a resume three batches into the epoch continues with the very next batch (other worker count)
    resumed = _dm(source=f"wds:{shards}", num_workers=2)
    resumed.load_state_dict({"epoch": 0, "batches_done": 3})
    assert _same(_batches(resumed.train_dataloader()), epoch0[3:])
    # the next epoch shuffles anew, the same images
    loader.sampler.set_epoch(1)
    epoch1 = _batches(loader)
    assert not _same(epoch1, epoch0) and sorted(t for _, y in epoch1 for t in y) == targets
    state = loader.state_dict()  # without a trainer: the start of the epoch it stands in
    assert state == {"epoch": 1, "batches_done": 0}


def test_wds_ranks_read_their_own_shards_and_validation_every_image_once(toy, shards):
    source = ShardSource(str(shards))
    streams = []
    for rank in (0, 1):
        stream = source.dataset("train", None)
        stream.configure(rank, 2, 4, True)
        streams.append(stream)
    assert len(streams[0]) == len(streams[1]) == 20  # 40 // 2 ranks: the same steps on both
    urls = [{s["__url__"] for s in itertools.islice(stream._rank_stream(0), len(stream))} for stream in streams]
    assert not urls[0] & urls[1] and urls[0] | urls[1] == {str(shards / f"train-{i:06d}.tar") for i in range(5)}
    with pytest.raises(DataError, match="5 training shards for 6 processes"):
        source.dataset("train", None).configure(0, 6, 4, True)
    # validation: every rank reads all shards and keeps every second image
    folder = _dm(root=toy, eval_batch_size=5)
    want = _images(folder.val_dataloader())
    got = []
    for rank in (0, 1):
        dm = _dm(source=f"wds:{shards}", eval_batch_size=5)
        dm.trainer = type("T", (), {"world_size": 2, "global_rank": rank})()
        loader = dm.val_dataloader()
        assert len(loader) == 2
        got += _images(loader)
    assert got and sorted(got) == want


def test_wds_brace_pattern_of_shards_without_info_file(shards, tmp_path):
    # shards of another tool: no _info.json; samples and classes are counted from the tar headers
    for tar in shards.glob("*.tar"):
        (tmp_path / tar.name).write_bytes(tar.read_bytes())
    dm = _dm(source=f"wds:{tmp_path}/train-{{000000..000004}}.tar", eval_batch_size=8)
    assert dm.classes == [str(i) for i in range(10)]
    assert len(dm.train_dataloader()) == 10
    assert sum(len(y) for _, y in dm.val_dataloader()) == 20  # val-*.tar, found beside the pattern
    with pytest.raises(DataError, match=r"1 shard\(s\) of .*train-\{000000..000005\}.tar do not exist"):
        _dm(source=f"wds:{tmp_path}/train-{{000000..000005}}.tar")


def test_wds_damaged_member_is_named_and_skipped(tmp_path):
    root = make_toy_classification(tmp_path / "toy", train_per_class=2, val_per_class=1, size=32)
    bad = next((root / "train" / "ring").iterdir())
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    assert run_tool("make_shards", root, tmp_path / "shards", "--shard-size", "8").returncode == 0
    dm = _dm(source=f"wds:{tmp_path / 'shards'}", drop_last=False)
    with pytest.warns(RuntimeWarning, match=r"skipped unreadable image .*train-00000\d\.tar:\d{8}\.jpeg"):
        seen = sum(len(b[1]) for b in dm.train_dataloader() if b is not None)
    assert seen == 19 and dm.num_skipped == 1


# --------------------------------------------------------------------------------------------
# hf: a DatasetDict saved to disk
# --------------------------------------------------------------------------------------------
def test_hf_source_reads_the_folders_images_and_resumes_exactly(toy, hfds):
    folder, hf = _dm(root=toy, eval_batch_size=5), _dm(source=f"hf:{hfds}", eval_batch_size=5)
    assert hf.classes == folder.classes and hf.num_classes == 10
    assert _images(hf.val_dataloader()) == _images(folder.val_dataloader())
    epoch0 = _batches(hf.train_dataloader())
    assert len(epoch0) == 10
    resumed = _dm(source=f"hf:{hfds}")
    resumed.load_state_dict({"epoch": 0, "batches_done": 4})
    assert _same(_batches(resumed.train_dataloader()), epoch0[4:])
    hf.setup("predict")
    x, y, names = next(iter(hf.predict_dataloader()))
    assert list(names) == ["validation[0]", "validation[1]", "validation[2]", "validation[3]", "validation[4]"]


# --------------------------------------------------------------------------------------------
# The command line: fit from shards, validate from the DatasetDict, predict from shards
# --------------------------------------------------------------------------------------------
def test_fit_validate_predict_from_the_new_sources(shards, hfds, tmp_path, monkeypatch):
    from classification.__main__ import cli
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(TOY), "--data.img_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
              "--trainer.default_root_dir", str(tmp_path / "run")]
    fit = cli(["fit", *common, "--data.source", f"wds:{shards}", "--trainer.max_epochs", "1"])
    assert fit.trainer.global_step == 5  # 40 images / 8, known before the epoch ran
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["datamodule_hyper_parameters"]["source"] == f"wds:{shards}" and len(raw["class_names"]) == 10
    val = cli(["validate", *common, "--data.source", f"hf:{hfds}", "--ckpt_path", str(ckpt)])
    assert 0.0 <= float(val.trainer.callback_metrics["val/top1"]) <= 1.0
    cli(["predict", *common, "--data.source", f"wds:{shards}", "--ckpt_path", str(ckpt)])
    rows = next((tmp_path / "run").rglob("predictions.csv")).read_text().strip().splitlines()
    assert len(rows) == 1 + 20 and "val/" in rows[1]  # every validation image, named by its path in the set


def test_bad_sources_are_one_line(tmp_path, capsys):
    import datasets
    from classification.__main__ import main
    no_image = datasets.Dataset.from_dict({"pixels": [[0, 1], [2, 3]], "label": [0, 1]})
    datasets.DatasetDict({"train": no_image, "validation": no_image}).save_to_disk(tmp_path / "no_image")
    no_label = datasets.Dataset.from_dict({"image": [None, None], "caption": ["a", "b"]},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "caption": datasets.Value("string")}))
    datasets.DatasetDict({"train": no_label, "val": no_label}).save_to_disk(tmp_path / "no_label")
    cases = [(f"hf:{tmp_path / 'no_image'}", "no image column of type Image (its columns: pixels, label)"),
             (f"hf:{tmp_path / 'no_label'}", "no label column of type ClassLabel (its columns: image, caption)"),
             (f"wds:{tmp_path}/train-{{000..009}}.tar", "matches no file"),
             (f"wds:{tmp_path / 'no_image'}", "matches no file"),
             ("webdataset", "is not a data source"),
             ("folder", "pass --data.root DIR")]  # the default source needs its root
    for source, fragment in cases:
        code = main(["fit", "--config", str(TOY), "--data.source", source,
                     "--trainer.default_root_dir", str(tmp_path / "run")])
        r = subprocess.CompletedProcess([], code, *capsys.readouterr())
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith("python -m classification: error: ") and fragment in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_wds_fit_killed_mid_epoch_resumes_to_the_uninterrupted_weights(shards, tmp_path, monkeypatch):
    # 40 images / batch 4 = 10 steps per epoch, 2 epochs; a checkpoint every 3 steps: the kill at
    # step 13 resumes from step 12, two batches into the second epoch
    from classification.__main__ import cli
    from tool_runner import run_classification
    args = ["--config", str(TOY), "--data.source", f"wds:{shards}", "--data.img_size", "32", "--data.batch_size", "4",
            "--data.num_workers", "0", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", "steps", "--trainer.callbacks.every_n_train_steps", "3",
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.enable_version_counter", "false"]
    for name in ("full", "killed"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "full")
    full = cli(["fit", *args])
    killed = run_classification(["fit", *args, "--trainer.callbacks+=tool_runner.KillAtStep",
                                 "--trainer.callbacks.step", "13"], cwd=tmp_path / "killed")
    assert killed.returncode == 17, killed.stderr[-3000:]
    monkeypatch.chdir(tmp_path / "killed")
    state = torch.load("steps/last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 12 and state["ImageNetDataModule"] == {"epoch": 1, "batches_done": 2}
    resumed = cli(["fit", *args, "--ckpt_path", "steps/last.ckpt"])
    assert resumed.trainer.global_step == full.trainer.global_step == 20
    a, b = full.model.model.state_dict(), resumed.model.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
