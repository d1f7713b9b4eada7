"""The neutral OpenMMLab package: the backbone in mmengine's root registry (found by mmdet and
mmseg), shapes, freezing, pretrained init, safe loading of mmengine checkpoints, the runner's
bad-input errors, the command-line tools' one-line errors, and the backbone benchmark's handling
of a measuring process that dies."""
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.nn.modules.batchnorm import _BatchNorm

# without the OpenMMLab stack this module is skipped (visibly), so -m "not mm" runs everywhere
pytest.importorskip("mmengine")

from backbones import CheckpointError, efficientformerv2_s0, save_checkpoint
from openmmlab import EfficientFormerV2
from openmmlab.benchmark import ChildDiedError, benchmark_backbone, run_in_fresh_process
from openmmlab.runner import ConfigError, check_data_roots, load_config, read_checkpoint
from child_targets import dies_with_exit_code_3, doubles, raises_memory_error
from tool_runner import assert_one_line_error as _assert_one_line_error, run_tool

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parents[1]
DET_TOY = ROOT / "configs/detection/mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py"
SEG_TOY = ROOT / "configs/segmentation/fpn_efficientformerv2-s0_ade20k-toy.py"
from conftest import WIDTHS

WIDTHS_S0 = WIDTHS["efficientformerv2_s0"]


def _down(n: int, times: int) -> int:
    for _ in range(times):
        n = (n - 1) // 2 + 1  # 3x3 stride-2 convolution, padding 1
    return n


# --- registration ----------------------------------------------------------------------------

def test_registered_once_in_the_root_registry_and_found_by_mmdet_and_mmseg():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS

    assert ROOT_MODELS.module_dict["EfficientFormerV2"] is EfficientFormerV2
    for registry in (MMDET_MODELS, MMSEG_MODELS):
        assert "EfficientFormerV2" not in registry.module_dict  # one registration, in the parent
        assert registry.get("EfficientFormerV2") is EfficientFormerV2
        backbone = registry.build(dict(type="EfficientFormerV2", arch="s0", out_indices=(1, 3)))
        assert isinstance(backbone, EfficientFormerV2) and backbone.widths == [48, 176]


def test_the_package_imports_neither_mmdet_nor_mmseg():
    code = ("import sys; sys.modules['mmdet'] = None; sys.modules['mmseg'] = None\n"
            "import openmmlab, openmmlab.runner, openmmlab.benchmark\n"
            "from mmengine.registry import MODELS\n"
            "print(MODELS.build(dict(type='EfficientFormerV2', arch='s0')).widths)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(WIDTHS_S0)


# --- the backbone ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(800, 1333), (97, 203)])
def test_feature_shapes_and_strides(size):
    backbone = EfficientFormerV2("s0").eval()
    h, w = size
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, h, w))
    assert backbone.strides == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [(1, c, _down(h, i + 2), _down(w, i + 2))
                                               for i, c in enumerate(WIDTHS_S0)]
    assert all(math.ceil(h / s) == f.shape[2] for f, s in zip(feats, backbone.strides))


def test_out_indices_and_arch_dict():
    arch = {"widths": [16, 24, 32, 48], "expansions": [[2], [2], [2, 2], [2, 2]], "attention": [0, 0, 1, 1]}
    backbone = EfficientFormerV2(arch, out_indices=(1, 3))
    feats = backbone(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [24, 48] and backbone.strides == [8, 32]
    with pytest.raises(ValueError, match="frozen_stages"):
        EfficientFormerV2("s0", frozen_stages=5)
    # stages after the last returned one never run: none of their parameters waits for a gradient
    # (DDP with find_unused_parameters=False would fail on them)
    shallow = EfficientFormerV2(arch, out_indices=(0, 1))
    shallow.train()
    shallow(torch.randn(1, 3, 64, 96))[-1].sum().backward()
    trainable = [n for n, p in shallow.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith(("body.stages.2.", "body.stages.3.")) for n in trainable)
    assert all(p.grad is not None for n, p in shallow.named_parameters() if p.requires_grad)


def test_norm_eval_keeps_batchnorm_frozen():
    backbone = EfficientFormerV2("s0", norm_eval=True)
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.requires_grad for m in convs)
    before = [m.running_mean.clone() for m in bns]
    backbone(torch.randn(2, 3, 64, 64)).__getitem__(-1).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    assert all(p.grad is None for m in bns for p in m.parameters())


def test_frozen_stages():
    backbone = EfficientFormerV2("s0", frozen_stages=2)
    backbone.train()
    frozen = [backbone.body.stem, *backbone.body.stages[:2]]
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(not p.requires_grad for f in frozen for p in f.parameters())
    assert all(m.training for s in backbone.body.stages[2:] for m in s.modules())
    assert all(p.requires_grad for s in backbone.body.stages[2:] for p in s.parameters())


@pytest.fixture(scope="module")
def reference():
    model = timm.create_model("efficientformerv2_s0")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("fmt", ["project", "timm", "official"])
def test_pretrained_init_from_each_format(tmp_path, reference, fmt, official_layout):
    sd = reference.state_dict()
    if fmt == "project":
        model = efficientformerv2_s0()
        model.load_state_dict({k.replace("attention_biases", "pos_bias.attention_biases"): v for k, v in sd.items()})
        path = save_checkpoint(model, tmp_path / "s0.safetensors")
    elif fmt == "timm":
        path = tmp_path / "s0_timm.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "eformer_s0_450.pth"
        torch.save({"model": official_layout(sd)}, path)
    backbone = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    reference.eval()
    backbone.eval()
    x = torch.randn(1, 3, 224, 224)  # timm's attention biases are fixed to the 224 grid
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        torch.testing.assert_close(list(backbone(x)), expected, rtol=1e-4, atol=1e-4)


def test_pretrained_init_reports_missing_keys(tmp_path):
    sd = efficientformerv2_s0().state_dict()
    del sd["stages.2.blocks.4.token_mixer.k.bn.weight"]
    path = save_checkpoint(sd, tmp_path / "broken.safetensors")
    backbone = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r"missing: stages\.2\.blocks\.4\.token_mixer\.k\.bn\.weight"):
        backbone.init_weights()
    with pytest.raises(ValueError, match="checkpoint"):
        EfficientFormerV2("s0", init_cfg=dict(type="Pretrained"))


def test_pretrained_init_refuses_deploy_form_weights(tmp_path):
    """Fused weights would need fuse() after the optimizer holds the training-form parameters."""
    path = save_checkpoint(efficientformerv2_s0().eval().fuse(), tmp_path / "s0_deploy.safetensors")
    backbone = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match="deploy-form weights.*pass the training-form checkpoint"):
        backbone.init_weights()
    assert not backbone.body.is_fused


def test_with_cp_gives_the_same_outputs_and_gradients():
    """mmdet's with_cp: the blocks are recomputed in the backward pass (they run twice), and
    outputs and gradients are those of the plain backbone."""
    arch = {"widths": [16, 24, 32, 48], "expansions": [[2], [2], [2, 2], [2, 2]], "attention": [0, 0, 1, 1]}
    plain = EfficientFormerV2(arch, drop_path_rate=0.0)
    cp = EfficientFormerV2(arch, drop_path_rate=0.0, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    assert cp.with_cp and not plain.with_cp
    x = torch.randn(2, 3, 64, 96)
    grads, calls = [], []
    for model in (plain, cp):
        model.train()
        count = [0]
        model.body.stages[2].blocks[0].register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        feats = model(x)
        sum((f * (i + 1)).mean() for i, f in enumerate(feats)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        calls.append(count[0])
        if model is plain:
            expected = [f.detach() for f in feats]
        else:
            torch.testing.assert_close([f.detach() for f in feats], expected)
    assert calls == [1, 2]  # recomputed in the backward pass
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # no recomputation without gradients
        torch.testing.assert_close([f for f in cp.eval()(x)], [f for f in plain.eval()(x)])


def _lay_out_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """huggingface_hub's cache layout, as a download of `repo` (main) leaves it."""
    import hashlib

    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "blobs").mkdir()
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / sha).write_bytes(data)
        (folder / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", sha))


def test_pretrained_init_from_a_hub_spec(tmp_path, monkeypatch, reference):
    """init_cfg checkpoint='hf-hub:timm/...' goes through backbones.load_checkpoint and
    huggingface_hub's own cache (laid out here, offline); the paper configs default to it."""
    from huggingface_hub import constants
    from safetensors.torch import save as safetensors_bytes

    from openmmlab.runner import check_init_checkpoints

    spec = "hf-hub:timm/efficientformerv2_s0.snap_dist_in1k"
    cache = tmp_path / "hf-cache"
    sd = {k: v.detach().contiguous().clone() for k, v in reference.state_dict().items()}
    _lay_out_hub_cache(cache, spec.removeprefix("hf-hub:"), {"model.safetensors": safetensors_bytes(sd)})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for config in ("detection/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py",
                   "segmentation/fpn_efficientformerv2-s0_ade20k-512x512_40k.py"):
        cfg = load_config(ROOT / "configs" / config, tmp_path / "run")
        assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=spec)
        check_init_checkpoints(cfg)  # a spec, not a missing file
    backbone = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained", checkpoint=spec))
    backbone.init_weights()
    reference.eval()
    backbone.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(list(backbone(x)), reference.forward_intermediates(x, intermediates_only=True),
                                   rtol=1e-4, atol=1e-4)
    other = EfficientFormerV2("s0", init_cfg=dict(type="Pretrained",
                                                  checkpoint="hf-hub:timm/efficientformerv2_s1.snap_dist_in1k"))
    with pytest.raises(CheckpointError, match="efficientformerv2_s1.snap_dist_in1k"):  # not cached, offline
        other.init_weights()


# --- safe loading ----------------------------------------------------------------------------

class _Sneaky:
    def __reduce__(self):  # pickled as getattr(HistoryBuffer, "__init__"): must not be resolved
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, "__init__")


def test_safe_loading_allows_only_mmengine_statistics(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({"hub": buf}, tmp_path / "ok.pth")
    assert torch.load(tmp_path / "ok.pth", weights_only=True)["hub"].current() == 1.5
    torch.save({"x": _Sneaky()}, tmp_path / "bad.pth")
    with pytest.raises(pickle.UnpicklingError, match="refused getattr"):
        torch.load(tmp_path / "bad.pth", weights_only=True)


# --- the runner's checks ---------------------------------------------------------------------

def test_read_checkpoint_refuses_what_is_not_an_mmengine_checkpoint(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(0.5)
    good = tmp_path / "epoch_1.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"loss": buf}}, good)
    assert torch.equal(read_checkpoint(good)["state_dict"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match="not a torch checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty file"):
        read_checkpoint(tmp_path / "empty.pth")
    torch.save({"x": _Sneaky()}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="refused getattr"):
        read_checkpoint(tmp_path / "bad.pth")
    torch.save(torch.ones(1), tmp_path / "tensor.pth")
    with pytest.raises(ConfigError, match="holds a Tensor"):
        read_checkpoint(tmp_path / "tensor.pth")


def test_data_roots_are_checked_for_the_loaders_of_the_run(tmp_path):
    cfg = load_config(SEG_TOY, tmp_path / "run", {"train_dataloader.dataset.data_root": str(tmp_path),
                                                  "val_dataloader.dataset.data_root": str(tmp_path)})
    check_data_roots(cfg, "train")
    with pytest.raises(FileNotFoundError, match="test_dataloader"):
        check_data_roots(load_config(SEG_TOY, tmp_path / "run", {"test_dataloader.dataset.data_root": "no/such"}),
                         "test")
    cfg.train_dataloader.dataset = dict(type="RepeatDataset", times=2, dataset=dict(data_root="no/such/root"))
    with pytest.raises(FileNotFoundError, match="no/such/root"):
        check_data_roots(cfg, "train")


# --- command-line tools: one line on stderr, exit status 2, no traceback ------------------------

def _tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_tool(name.removesuffix(".py"), *args, cwd=cwd)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    from segmentation.toy_data import make_toy_ade20k

    return make_toy_ade20k(tmp_path_factory.mktemp("toy_ade"), sizes={"training": 2, "validation": 1})


def _seg_roots(root: Path) -> list[str]:
    return [f"{loader}.dataset.data_root={root}" for loader in ("train_dataloader", "val_dataloader",
                                                                 "test_dataloader")]


def test_mm_train_missing_config(tmp_path):
    out = _tool("mm_train.py", tmp_path / "no_such_config.py", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "no_such_config.py", "not found")


def test_mm_train_config_with_an_unknown_key(tmp_path, seg_data):
    config = tmp_path / "typo.py"
    config.write_text(f"_base_ = {str(SEG_TOY)!r}\nmodel = dict(backbone=dict(frozen_stage=1))\n")
    out = _tool("mm_train.py", config, "--work-dir", tmp_path / "run", "--cfg-options", *_seg_roots(seg_data),
                cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "typo.py", "frozen_stage")


def test_mm_train_unknown_key_in_a_dataloader(tmp_path, seg_data):
    out = _tool("mm_train.py", SEG_TOY, "--work-dir", tmp_path / "run", "--cfg-options", *_seg_roots(seg_data),
                "train_dataloader.dataset.img_sufix=.png", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "img_sufix")


def test_mm_train_missing_data_root(tmp_path):
    out = _tool("mm_train.py", DET_TOY, "--work-dir", tmp_path / "run", cwd=tmp_path)  # data/toy_coco/ not here
    _assert_one_line_error(out, "mm_train", "data/toy_coco/", "train_dataloader", "make_toy_data.py")


def test_mm_train_resume_from_a_missing_checkpoint(tmp_path):
    out = _tool("mm_train.py", SEG_TOY, "--resume", tmp_path / "iter_9.pth", cwd=tmp_path)
    _assert_one_line_error(out, "mm_train", "iter_9.pth", "not found")


def test_mm_test_missing_checkpoint(tmp_path):
    out = _tool("mm_test.py", DET_TOY, tmp_path / "epoch_12.pth", cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "epoch_12.pth", "not found")


def test_mm_test_text_file_as_checkpoint(tmp_path):
    (tmp_path / "epoch_12.pth").write_text("weights go here\n")
    out = _tool("mm_test.py", DET_TOY, tmp_path / "epoch_12.pth", cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "epoch_12.pth", "not a torch checkpoint")


def test_mm_test_missing_config(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "epoch_1.pth")
    out = _tool("mm_test.py", tmp_path / "no_such_config.py", tmp_path / "epoch_1.pth", cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "no_such_config.py", "not found")


def test_mm_test_missing_data_root(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "epoch_1.pth")
    out = _tool("mm_test.py", SEG_TOY, tmp_path / "epoch_1.pth", cwd=tmp_path)
    _assert_one_line_error(out, "mm_test", "data/toy_ade20k/", "test_dataloader")


@pytest.mark.parametrize("args, fragment", [(["--variants", "s9"], "invalid choice: 's9'"),
                                            (["--height", "0"], "--height")])
def test_mm_benchmark_backbone_bad_arguments(tmp_path, args, fragment):
    out = _tool("mm_benchmark_backbone.py", *args, cwd=tmp_path)
    _assert_one_line_error(out, "mm_benchmark_backbone", fragment)


# --- the backbone benchmark ------------------------------------------------------------------

def test_run_in_fresh_process_returns_the_result():
    assert run_in_fresh_process(doubles, 21) == 42


def test_benchmark_child_that_dies_is_an_error_with_its_exit_code():
    with pytest.raises(ChildDiedError, match="s0 at 64x48 ended without a result: exit code 3") as info:
        benchmark_backbone("s0", 48, 64, 1, 1, measure_fn=dies_with_exit_code_3)
    assert info.value.exitcode == 3
    with pytest.raises(ChildDiedError, match="exit code 1") as info:  # uncaught error in the child
        benchmark_backbone("s0", 48, 64, 1, 1, measure_fn=raises_memory_error)
    assert info.value.exitcode == 1
    with pytest.raises(ValueError, match="unknown EfficientFormerV2 variant"):  # refused before any process
        benchmark_backbone("s9", 48, 64, 1, 1, measure_fn=dies_with_exit_code_3)
    with pytest.raises(ValueError, match="height must be >= 1"):
        benchmark_backbone("s0", 0, 64, 1, 1, measure_fn=dies_with_exit_code_3)


def test_measure_backbone_in_this_process_gives_the_record():
    from openmmlab.benchmark import measure_backbone
    threads = torch.get_num_threads()
    try:
        record = measure_backbone("s0", 32, 48, repeats=2, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert (record["variant"], record["height"], record["width"], record["threads"]) == ("s0", 32, 48, 1)
    assert round(record["params"] / 1e6, 2) == 3.25 and record["forward_ms_median"] > 0  # the tool's "3.25 M"
    assert record["peak_rss_mib"] > 0 and record["forward_peak_mib"] >= 0


def test_mm_benchmark_backbone_tool_measures_a_small_input(tmp_path):
    # a new process: the tool measures in spawned children, which import their function by module
    out = subprocess.run([sys.executable, str(ROOT / "tools/mm_benchmark_backbone.py"), "--variants", "s0", "--height",
                          "64", "--width", "96", "--repeats", "2", "--threads", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    row = out.stdout.strip().splitlines()[-1]
    assert row.startswith("| EfficientFormerV2-S0 | 96x64 | 3.25 M | ") and row.endswith(" MiB |")
