"""Weights at the command line (issue 26 item 4, issue 22): errors in the command line's words,
`tools/convert_checkpoint.py` with `--img-size` and hub sources and normal file permissions, and
`python -m classification predict` on any folder or list of images with readable class names.

Bad input is one line on stderr, exit status 2, no traceback (as in tests/test_tools_cli.py).
"""
from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_hub import S0_REPO, lay_out_repo, state_dict_bytes
from tool_runner import run_tool

from backbones import EfficientFormerV2, create_model, load_checkpoint, read_state_dict, save_checkpoint
from classification.__main__ import main as cls_main
from classification.image_files import class_names, find_images, predict_images, predict_samples
from classification.toy_data import make_toy_classification

CLS = "python -m classification"
TOY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "classification" / "toy.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run fastest on one thread


def _assert_one_line_error(r: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _cls(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m classification ARGS` in this process: status, stdout, stderr."""
    code = cls_main(list(map(str, args)))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_classification(tmp_path_factory.mktemp("toy"), seed=0, train_per_class=2,
                                   val_per_class=1, size=32)


# --------------------------------------------------------------------------------------------
# tools/convert_checkpoint.py
# --------------------------------------------------------------------------------------------
def test_convert_with_a_wrong_model_advises_the_flag(tmp_path):
    src = save_checkpoint(create_model("efficientformerv2_s0", num_classes=3, img_size=64), tmp_path / "s0.pth")
    r = run_tool("convert_checkpoint", src, tmp_path / "out.safetensors", "--model", "efficientformerv2_s1")
    line = _assert_one_line_error(r, "convert_checkpoint", "the checkpoint is efficientformerv2_s0",
                                  "pass --model efficientformerv2_s0", "leave --model out")
    assert "create_model(" not in line


def test_convert_a_lightning_checkpoint_trained_at_64px(tmp_path):
    trained = create_model("efficientformerv2_s0", num_classes=3, img_size=64)
    src = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {"model." + k: v for k, v in trained.state_dict().items()}}, src)
    dst = tmp_path / "s0_64.safetensors"
    r = run_tool("convert_checkpoint", src, dst, "--model", "efficientformerv2_s0")
    assert r.returncode == 0, r.stderr
    assert "img_size 64" in r.stdout and "resampled" not in r.stdout
    model = create_model("efficientformerv2_s0", num_classes=3, img_size=64)
    report = load_checkpoint(model, dst)
    assert report.ok and not report.resampled
    assert torch.equal(model.stem.conv1.conv.weight, trained.stem.conv1.conv.weight)
    # another size on request: the bias tables are resampled to its grid
    r = run_tool("convert_checkpoint", src, tmp_path / "s0_224.safetensors", "--img-size", "224")
    assert r.returncode == 0, r.stderr
    assert "img_size 224, bias tables resampled from 64 to 224 px" in r.stdout
    assert not load_checkpoint(create_model("efficientformerv2_s0", num_classes=3), tmp_path / "s0_224.safetensors").resampled
    bad = run_tool("convert_checkpoint", src, dst, "--img-size", "0")
    _assert_one_line_error(bad, "convert_checkpoint", "expected a positive integer")


def test_convert_writes_readable_files(tmp_path):
    src = save_checkpoint(create_model("efficientformerv2_s0", num_classes=3, img_size=64), tmp_path / "s0.pth")
    old = os.umask(0o022)
    try:
        r = run_tool("convert_checkpoint", src, tmp_path / "out.safetensors")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.safetensors").stat().st_mode & 0o777 == 0o644


def test_convert_from_the_hub_offline(tmp_path, monkeypatch, randomize_):
    import timm
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    spec = "hf-hub:" + S0_REPO
    r = run_tool("convert_checkpoint", spec, tmp_path / "s0.safetensors")
    _assert_one_line_error(r, "convert_checkpoint", "model.safetensors is not in the Hugging Face cache",
                           f"https://huggingface.co/{S0_REPO}/resolve/main/model.safetensors")
    reference = randomize_(timm.create_model("efficientformerv2_s0"))
    lay_out_repo(cache, S0_REPO, {"model.safetensors": state_dict_bytes(reference.state_dict())})
    r = run_tool("convert_checkpoint", spec, tmp_path / "s0.safetensors", "--model", "efficientformerv2_s0")
    assert r.returncode == 0, r.stderr
    assert "(timm, efficientformerv2_s0, 1000 classes, img_size 224)" in r.stdout
    assert torch.equal(read_state_dict(tmp_path / "s0.safetensors")["head.weight"], reference.head.weight)


# --------------------------------------------------------------------------------------------
# --model.pretrained in command-line words
# --------------------------------------------------------------------------------------------
def test_pretrained_with_another_class_count_names_the_flag(tmp_path, toy, capsys):
    ckpt = save_checkpoint(create_model("efficientformerv2_s0", num_classes=1000, img_size=64),
                           tmp_path / "in1k.safetensors")
    r = _cls(capsys, "validate", "--config", TOY_CONFIG, "--data.root", toy, "--model.pretrained", ckpt,
             "--trainer.default_root_dir", tmp_path / "run")
    line = _assert_one_line_error(r, CLS, "1000 classes but the model has", "--model.pretrained_classifier drop",
                                  "--model.pretrained_classifier resize")
    assert "classifier='drop'" not in line
    assert not (tmp_path / "run").exists()


def test_pretrained_of_another_variant_names_the_flag(tmp_path, toy, capsys):
    ckpt = save_checkpoint(create_model("efficientformerv2_s1", num_classes=4, img_size=64), tmp_path / "s1.pth")
    r = _cls(capsys, "validate", "--config", TOY_CONFIG, "--data.root", toy, "--model.pretrained", ckpt,
             "--trainer.default_root_dir", tmp_path / "run")
    line = _assert_one_line_error(r, CLS, "the checkpoint is efficientformerv2_s1",
                                  "pass --model.model_name efficientformerv2_s1")
    assert "create_model(" not in line


# --------------------------------------------------------------------------------------------
# predict on any images, with names a person can read
# --------------------------------------------------------------------------------------------
def _photos(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"photo{i}.jpg"
        Image.new("RGB", (40, 30), (60 * i, 100, 200 - 50 * i)).save(p)
        paths.append(p)
    return paths


def test_find_images_takes_folders_files_and_lists(tmp_path):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "photos" / "notes.txt.bak").write_text("x")
    nested = _photos(tmp_path / "photos" / "more", 1)
    assert find_images(tmp_path / "photos") == sorted(photos + nested)
    assert find_images(photos[1]) == [photos[1]]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\nphotos/photo2.jpg\n\n{photos[0]}\n")
    assert find_images(listing) == [photos[2], photos[0]]
    assert find_images([photos[0], tmp_path / "photos" / "more"]) == [photos[0], *nested]
    (tmp_path / "empty").mkdir()
    for bad, message in [(tmp_path / "empty", "no image to predict on"), (tmp_path / "gone", "does not exist"),
                         (tmp_path / "photos" / "notes.txt.bak", "is not an image")]:
        with pytest.raises(ValueError, match=message):
            find_images(bad)


def test_predict_samples_keep_targets_of_a_split_only(toy, tmp_path):
    classes = sorted(p.name for p in (toy / "train").iterdir())
    index = {c: i for i, c in enumerate(classes)}
    split = predict_samples(toy / "val", index)
    assert {t for _, t in split} == set(range(len(classes)))
    loose = predict_samples(_photos(tmp_path / "loose")[0].parent, index)
    assert [t for _, t in loose] == [-1, -1, -1]


def test_imagenet_class_names():
    from timm.data import ImageNetInfo

    names = class_names(1000)
    assert len(names) == 1000 and names[0] == ImageNetInfo().label_descriptions()[0]
    assert class_names(1000, ImageNetInfo().label_names()) == names  # WordNet ids: the readable names
    own = [f"c{i}" for i in range(1000)]
    assert class_names(1000, own) == own and class_names(3, ["a", "b", "c"]) == ["a", "b", "c"]
    assert class_names(3) is None


def test_predict_images_in_python(tmp_path):
    model = create_model("efficientformerv2_s0", img_size=64)
    photos = _photos(tmp_path / "photos", 2)
    out = predict_images(model, tmp_path / "photos", top_k=3)
    assert [o["path"] for o in out] == list(map(str, photos))
    assert len(out[0]["classes"]) == 3 and out[0]["scores"] == sorted(out[0]["scores"], reverse=True)
    assert out[0]["classes"][0] == class_names(1000)[out[0]["indices"][0]]


@pytest.fixture(scope="module")
def toy_checkpoint(toy, tmp_path_factory) -> Path:
    classes = sorted(p.name for p in (toy / "train").iterdir())
    model = create_model("efficientformerv2_s0", num_classes=len(classes), img_size=64, distillation=False)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "toy.safetensors")


@pytest.mark.parametrize("what", ["folder", "file", "list"])
def test_predict_on_any_images_at_the_command_line(tmp_path, toy, toy_checkpoint, capsys, what):
    photos = _photos(tmp_path / "photos")
    source = {"folder": tmp_path / "photos", "file": photos[1], "list": tmp_path / "list.txt"}[what]
    (tmp_path / "list.txt").write_text("photos/photo0.jpg\nphotos/photo2.jpg\n")
    expected = {"folder": photos, "file": [photos[1]], "list": [photos[0], photos[2]]}[what]
    r = _cls(capsys, "predict", "--config", TOY_CONFIG, "--data.root", toy, "--data.predict_dir", source,
             "--model.pretrained", toy_checkpoint, "--trainer.default_root_dir", tmp_path / "run",
             "--trainer.logger", "false", "--data.num_workers", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    csv_path = Path(r.stdout.strip().splitlines()[-1].split(" written to ")[-1])
    rows = list(csv.DictReader(csv_path.open()))
    classes = sorted(p.name for p in (toy / "train").iterdir())
    assert [row["path"] for row in rows] == list(map(str, expected))
    assert all(row["target"] == "" and row["top1"] in classes for row in rows)


def test_predict_path_without_images_is_one_line_and_writes_nothing(tmp_path, toy, toy_checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    r = _cls(capsys, "predict", "--config", TOY_CONFIG, "--data.root", toy, "--data.predict_dir", tmp_path / "empty",
             "--model.pretrained", toy_checkpoint, "--trainer.default_root_dir", tmp_path / "run")
    _assert_one_line_error(r, CLS, "no image to predict on")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# Lightning checkpoints: a digest written on save, checked before a resume
# --------------------------------------------------------------------------------------------
def _lightning_checkpoint(num_classes: int = 4) -> dict:
    from classification.module import ImageClassifier

    m = ImageClassifier(num_classes=num_classes, img_size=64)
    checkpoint = {"epoch": 0, "global_step": 1, "state_dict": m.state_dict()}
    m.on_save_checkpoint(checkpoint)
    return checkpoint


def test_lightning_checkpoints_carry_a_digest_checked_on_load():
    from backbones.checkpoint import DIGEST_KEY, CheckpointError
    from classification.module import ImageClassifier

    checkpoint = _lightning_checkpoint()
    assert DIGEST_KEY in checkpoint
    m = ImageClassifier(num_classes=4, img_size=64)
    m.on_load_checkpoint(checkpoint)  # sound
    tampered = {**checkpoint, "state_dict": dict(checkpoint["state_dict"])}
    tampered["state_dict"]["model.head.weight"] = tampered["state_dict"]["model.head.weight"] + 1
    with pytest.raises(CheckpointError, match="damaged: its tensors do not match the digest"):
        m.on_load_checkpoint(tampered)
    ints = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    ints["state_dict"] = {**checkpoint["state_dict"], "model.head.bias": torch.zeros(4, dtype=torch.int64)}
    with pytest.raises(CheckpointError, match=r"model\.head\.bias is int64 but the model's is float32"):
        m.on_load_checkpoint(ints)


@pytest.mark.parametrize("damage", ["digest", "nan", "crc"])
def test_damaged_ckpt_path_is_refused_before_lightning_reads_it(tmp_path, toy, capsys, damage):
    classes = sorted(p.name for p in (toy / "train").iterdir())
    checkpoint = _lightning_checkpoint(len(classes))
    key = "model.stages.2.blocks.1.mlp.fc1.conv.weight"
    weight = checkpoint["state_dict"][key]
    path = tmp_path / "last.ckpt"
    if damage == "digest":
        checkpoint["state_dict"][key] = weight + 0.5
    elif damage == "nan":
        checkpoint["state_dict"][key] = torch.full_like(weight, float("nan"))
        checkpoint.pop("state_dict_sha256")
    torch.save(checkpoint, path)
    if damage == "crc":
        data = bytearray(path.read_bytes())
        data[data.find(weight.numpy().tobytes()[:64]) + 7] ^= 0x11
        path.write_bytes(bytes(data))
    fragment = {"digest": "do not match the digest", "nan": "NaN or Inf values in " + key,
                "crc": "fails its CRC check"}[damage]
    r = _cls(capsys, "validate", "--config", TOY_CONFIG, "--data.root", toy, "--ckpt_path", path,
             "--trainer.default_root_dir", tmp_path / "run")
    _assert_one_line_error(r, CLS, "damaged", fragment)


def test_pretrained_hub_spec_offline_and_damaged_files_are_one_line(tmp_path, toy, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    common = ["--config", TOY_CONFIG, "--data.root", toy, "--trainer.default_root_dir", tmp_path / "run"]
    r = _cls(capsys, "validate", *common, "--model.pretrained", "hf-hub:" + S0_REPO)
    _assert_one_line_error(r, CLS, f"--model.pretrained hf-hub:{S0_REPO}: model.safetensors is not in the Hugging "
                                   "Face cache", f"https://huggingface.co/{S0_REPO}/resolve/main/model.safetensors")
    sd = create_model("efficientformerv2_s0", num_classes=4, img_size=64).state_dict()
    sd["stem.conv1.conv.weight"] = torch.full_like(sd["stem.conv1.conv.weight"], float("inf"))
    bad = save_checkpoint(sd, tmp_path / "inf.safetensors")
    r = _cls(capsys, "validate", *common, "--model.pretrained", bad)
    _assert_one_line_error(r, CLS, f"--model.pretrained {bad}: damaged: NaN or Inf values in stem.conv1.conv.weight")
    assert not (tmp_path / "run").exists()
