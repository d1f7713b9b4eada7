"""timm's model contract on the classifier and the features_only model (issue 23), in the style of
timm's tests/test_models.py: every variant, small inputs, and timm's own `efficientformerv2_*` as
the reference where it has the feature (weights copied, outputs compared)."""
import copy
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from timm.models import create_feature_extractor
from timm.optim import create_optimizer_v2

from backbones import RELEASED, create_model, list_models, load_checkpoint

NAMES = list_models()
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "classification"
SIDE = 64  # input and training side: every grid (16, 8, 4, 2) small, the bias tables at their grid
# Code paths that every variant runs alike (the variants differ in widths and block counts only, of
# the same module types, all of which S0 has): TorchScript, FX, devices and dtypes, gradient
# checkpointing run on the smallest variant; whatever compares values with timm's model runs on
# every variant.
CODE_PATH_NAMES = ["efficientformerv2_s0"]


def _ours(name: str, **kwargs) -> torch.nn.Module:
    return create_model(name, img_size=SIDE, **kwargs)


def _timm_key(name: str) -> str:
    """timm's name of one of our parameters (timm keeps the bias table on the attention module)."""
    return name.replace(".pos_bias.attention_biases", ".attention_biases")


@pytest.fixture(scope="module", params=NAMES)
def pair(request, randomize_):
    """(ours, timm's) for one variant at SIDE, same random weights, eval mode."""
    torch.manual_seed(0)
    reference = randomize_(timm.create_model(request.param, img_size=SIDE)).eval()
    ours = _ours(request.param).eval()
    report = load_checkpoint(ours, reference.state_dict())
    assert report.ok and report.source_format == "timm"
    return ours, reference


def _x(batch: int = 2, side: int = SIDE) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(3))


def _close(a, b, atol: float = 1e-5) -> None:
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v, atol)
        return
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= atol


# ---------------------------------------------------------------------------------------------
# pretrained_cfg and the eval transform
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_matches_timm(name):
    reference = timm.create_model(name)
    for features_only in (False, True):
        model = create_model(name, features_only=features_only)
        cfg = model.pretrained_cfg
        assert model.default_cfg is cfg
        for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "classifier", "first_conv",
                    "num_classes", "hf_hub_id", "architecture", "tag"):
            assert cfg[key] == reference.pretrained_cfg[key], key
        assert cfg["hf_hub_id"] == f"timm/{name}.snap_dist_in1k"
        assert cfg["crop_pct"] == 0.95 and cfg["interpolation"] == "bicubic"
        assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
        # the paper's eval transform, as timm resolves it for its own model
        ours_cfg, ref_cfg = resolve_model_data_config(model), resolve_model_data_config(reference)
        assert ours_cfg == ref_cfg
        assert repr(create_transform(**ours_cfg)) == repr(create_transform(**ref_cfg))


def test_pretrained_cfg_of_other_architectures():
    model = create_model("efficientformerv2_s0", img_size=96, distillation=False)
    assert model.pretrained_cfg["input_size"] == (3, 96, 96)  # the training side the model was built for
    assert model.pretrained_cfg["classifier"] == "head"
    searched = type(model)({"base": "s0", "widths": [16, 24, 40, 64]}, num_classes=3)
    assert searched.pretrained_cfg["hf_hub_id"] is None
    transform = create_transform(**resolve_model_data_config(searched))
    assert "bicubic" in repr(transform).lower()
    assert sorted(v.model_name for v in RELEASED) == NAMES


# ---------------------------------------------------------------------------------------------
# forward_intermediates, prune_intermediate_layers, reset_classifier: equal to timm's
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {}, {"indices": [1, 2, 3], "intermediates_only": True}, {"indices": 2}, {"indices": [-1], "norm": True},
    {"indices": [0, 1], "stop_early": True}, {"indices": [0, 3], "norm": True, "stop_early": True},
])
def test_forward_intermediates_equal_timm(pair, kwargs):
    ours, reference = pair
    x = _x()
    with torch.no_grad():
        got, want = ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs)
        _close(got, want)
        if not kwargs:  # all stages, then the normed final map, as forward_features
            _close(got[0], ours.forward_features(x))
            assert [f.shape[1] for f in got[1]] == [i["num_chs"] for i in ours.feature_info]
    with pytest.raises(ValueError, match="NCHW"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", NAMES)
def test_features_only_forward_is_forward_intermediates(name, randomize_):
    full = randomize_(_ours(name)).eval()
    model = _ours(name, features_only=True, out_indices=(1, 2)).eval()
    load_checkpoint(model, full.state_dict())
    x = _x(1)
    with torch.no_grad():
        feats = model(x)
        assert isinstance(feats, list) and len(feats) == 2
        _close(feats, model.forward_intermediates(x, indices=[1, 2], intermediates_only=True), atol=0)
        _close(feats, full.forward_intermediates(x, indices=[1, 2], intermediates_only=True), atol=0)
        # norm=True applies to the last stage only, and a features_only model has no norm
        _close(model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True),
               full.forward_intermediates(x, indices=1, intermediates_only=True), atol=0)


@pytest.mark.parametrize("prune_norm", [False, True])
def test_prune_intermediate_layers_equal_timm(pair, prune_norm):
    ours, reference = copy.deepcopy(pair[0]), copy.deepcopy(pair[1])
    taken = ours.prune_intermediate_layers([0, 2], prune_norm=prune_norm)
    assert taken == reference.prune_intermediate_layers([0, 2], prune_norm=prune_norm) == [0, 2]
    assert len(ours.stages) == 3 and isinstance(ours.head, torch.nn.Identity)
    x = _x()
    with torch.no_grad():
        _close(ours.forward_intermediates(x, indices=[0, 2], intermediates_only=True),
               reference.forward_intermediates(x, indices=[0, 2], intermediates_only=True))
        if prune_norm:  # no pooling, no head: the last kept stage's map
            _close(ours(x), reference(x))
            assert ours(x).shape[1] == ours.feature_info[2]["num_chs"]


def test_prune_features_only_model():
    model = _ours("efficientformerv2_s0", features_only=True).eval()
    assert model.prune_intermediate_layers([0, -3]) == [0, 1]
    with torch.no_grad():
        feats = model(_x(1))
    assert len(model.stages) == 2 and [f.shape[1] for f in feats] == [32, 48]


def test_reset_classifier_equal_timm(pair):
    ours, reference = copy.deepcopy(pair[0]), copy.deepcopy(pair[1])
    x = _x()
    with torch.no_grad():
        for args in [(0, ""), (0, "avg")]:
            ours.reset_classifier(*args)
            reference.reset_classifier(*args)
            _close(ours(x), reference(x))
        ours.reset_classifier(0, "")
        assert ours(x).dim() == 4  # unpooled map, as timm's
        ours.reset_classifier(5, "avg")
        assert ours(x).shape == (2, 5) and ours.num_classes == 5
        ours.reset_classifier(7)  # global_pool kept
        assert ours(x).shape == (2, 7) and ours.global_pool == "avg"
    assert not ours.head.training  # the new heads follow the model's mode
    with pytest.raises(ValueError, match="global_pool"):
        ours.reset_classifier(3, "max")
    with pytest.raises(RuntimeError, match="no classifier"):
        _ours("efficientformerv2_s0", features_only=True).reset_classifier(3)


# ---------------------------------------------------------------------------------------------
# training: gradient checkpointing, layer decay, weight decay
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CODE_PATH_NAMES)
def test_grad_checkpointing_same_gradients(name):
    torch.manual_seed(0)
    model = _ours(name, num_classes=4, drop_path_rate=0.2).train()
    model.set_distilled_training(True)
    x = _x()

    def grads(m):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same drop-path draws in both runs
        out, out_dist = m(x)
        (out.square().mean() + out_dist.square().mean()).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    calls = []
    # a pre-hook: the recomputation stops early, once it has what the backward pass needs
    checkpointed.stages[0].blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    want, got = grads(model), grads(checkpointed)
    assert len(calls) == 2  # the block ran again in the backward pass: it really was checkpointed
    assert want.keys() == got.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    checkpointed.set_grad_checkpointing(False)
    assert not any(s.grad_checkpointing for s in checkpointed.stages)


def test_layer_decay_gives_per_layer_learning_rates_as_timm(pair):
    ours, reference = pair
    opt = create_optimizer_v2(ours, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    ref = create_optimizer_v2(reference, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.65)

    def by_name(model, optimizer):
        names = {id(p): n for n, p in model.named_parameters()}
        return {_timm_key(names[id(p)]): (g["lr_scale"], g["weight_decay"])
                for g in optimizer.param_groups for p in g["params"]}

    got, want = by_name(ours, opt), by_name(reference, ref)
    assert got == want
    scales = sorted({s for s, _ in got.values()})
    assert len(scales) == 6  # stem, four stages, final norm and heads
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.65 ** 5)
    assert got["stem.conv1.conv.weight"][0] < got["stages.0.blocks.0.mlp.fc1.conv.weight"][0] \
        < got["stages.3.blocks.0.mlp.fc1.conv.weight"][0] < got["head.weight"][0]


@pytest.mark.parametrize("name", NAMES)
def test_group_matcher_and_no_weight_decay(name):
    model = create_model(name)
    reference = timm.create_model(name)
    assert {_timm_key(n) for n in model.no_weight_decay()} == reference.no_weight_decay()
    for coarse in (False, True):
        assert model.group_matcher(coarse) == reference.group_matcher(coarse)


# ---------------------------------------------------------------------------------------------
# TorchScript, FX, devices, dtypes, memory formats
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CODE_PATH_NAMES)
@pytest.mark.parametrize("features_only", [False, True])
def test_torchscript(name, features_only, randomize_):
    model = randomize_(_ours(name, features_only=features_only)).eval()
    scripted = torch.jit.script(model)
    x = _x(1)
    with torch.no_grad():
        _close(scripted(x), model(x))
        _close(scripted(_x(1, 45)), model(_x(1, 45)))  # another input size: the resampled bias path


@pytest.mark.parametrize("name", CODE_PATH_NAMES)
def test_fx_feature_extraction(name, randomize_):
    model = randomize_(_ours(name)).eval()
    nodes = {f"stages.{i}": f"stage{i}" for i in range(4)}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    for side in (SIDE, 45):  # the traced graph is not specialised to one input size
        x = _x(1, side)
        with torch.no_grad():
            got = extractor(x)
            want = model.forward_intermediates(x, intermediates_only=True)
        _close([got[f"stage{i}"] for i in range(4)], want, atol=0)


def test_fx_feature_graph_net_of_features_only_model():
    from timm.models import FeatureGraphNet

    model = _ours("efficientformerv2_s0", features_only=True).eval()
    net = FeatureGraphNet(model, out_indices=(1, 3))
    x = _x(1)
    with torch.no_grad():
        _close(net(x), model.forward_intermediates(x, indices=[1, 3], intermediates_only=True), atol=0)


@pytest.mark.parametrize("name", CODE_PATH_NAMES)
def test_any_device_and_dtype(name, randomize_):
    model = randomize_(_ours(name, num_classes=3)).eval()
    x = _x(1, 47)
    with torch.no_grad():
        want = model(x)
        # nothing in the forward is created on a fixed device: it runs on the meta device
        out = copy.deepcopy(model).to("meta")(x.to("meta"))
        assert out.device.type == "meta" and out.shape == want.shape
        # ... nor in a fixed dtype
        out = copy.deepcopy(model).double()(x.double())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out.float(), want, rtol=1e-4, atol=1e-4)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
            assert out.dtype == dtype and torch.isfinite(out).all()
            assert (out.float() - want).abs().max().item() < 0.1 * want.abs().max().item() + 0.05
        out = copy.deepcopy(model).to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        assert (out - want).abs().max().item() < 1e-4


def test_bf16_autocast_training_step_and_channels_last_features():
    model = _ours("efficientformerv2_s0", num_classes=3).train().to(memory_format=torch.channels_last)
    x = _x().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    features = _ours("efficientformerv2_s0", features_only=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = features(x)
    assert len(feats) == 4 and all(torch.isfinite(f).all() for f in feats)


@pytest.mark.slow
def test_compile_fullgraph():
    """torch.compile traces the classifier and the features_only model without graph breaks
    (fullgraph=True fails on any); the eager backend keeps this to Dynamo's tracing."""
    torch._dynamo.reset()
    for features_only in (False, True):
        model = _ours("efficientformerv2_s0", features_only=features_only).eval()
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        x = _x(1)
        with torch.no_grad():
            _close(compiled(x), model(x))


# ---------------------------------------------------------------------------------------------
# create_model(name, pretrained=...)
# ---------------------------------------------------------------------------------------------
def test_create_model_pretrained_from_a_local_file(tmp_path, randomize_):
    from backbones import save_checkpoint

    source = randomize_(_ours("efficientformerv2_s0", num_classes=5)).eval()
    path = save_checkpoint(source, tmp_path / "s0.safetensors")
    x = _x(1)
    for model in (create_model("efficientformerv2_s0", pretrained=str(path), img_size=SIDE, num_classes=5),
                  create_model("efficientformerv2_s0", str(path), img_size=SIDE, num_classes=5)):
        with torch.no_grad():
            _close(model.eval()(x), source(x), atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_create_model_pretrained_true_asks_for_the_variants_hub_weights(name, monkeypatch):
    import backbones.builder

    calls = []
    monkeypatch.setattr(backbones.builder, "load_checkpoint", lambda model, spec, **kw: calls.append((spec, kw)))
    create_model(name, pretrained=True)
    create_model(name, pretrained=True, num_classes=10)  # another class count: the heads stay fresh
    create_model(name, pretrained=True, features_only=True)
    create_model(name, pretrained=False)
    spec = f"hf-hub:timm/{name}.snap_dist_in1k"
    assert calls == [(spec, {"classifier": "load"}), (spec, {"classifier": "drop"}), (spec, {"classifier": "load"})]


def test_pretrained_true_needs_a_released_variant():
    from backbones import EfficientFormerV2, load_pretrained

    model = EfficientFormerV2({"base": "s0", "widths": [16, 24, 40, 64]}, num_classes=3)
    with pytest.raises(ValueError, match="no published weights"):
        load_pretrained(model, True)


# ---------------------------------------------------------------------------------------------
# fine-tuning: layer decay in the Lightning recipe's parameter groups, the finetune overlay
# ---------------------------------------------------------------------------------------------
def test_layer_decay_in_the_recipes_param_groups(pair):
    from timm.scheduler import CosineLRScheduler

    from classification.optim import decays, param_groups

    ours, reference = pair
    plain = param_groups(ours, 0.05)
    assert [g["weight_decay"] for g in plain] == [0.05, 0.0] and all("lr_scale" not in g for g in plain)
    groups = param_groups(ours, 0.05, layer_decay=0.65)
    names = {id(p): n for n, p in ours.named_parameters()}
    got = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(got) == len(names)
    # the learning-rate scales are timm's; the weight decay stays the official policy (decays())
    ref = create_optimizer_v2(reference, "adamw", lr=1e-3, layer_decay=0.65)
    ref_names = {id(p): n for n, p in reference.named_parameters()}
    want = {ref_names[id(p)]: g["lr_scale"] for g in ref.param_groups for p in g["params"]}
    params = dict(ours.named_parameters())
    for n, (scale, wd) in got.items():
        assert scale == want[_timm_key(n)], n
        assert wd == (0.05 if decays(n, params[n]) else 0.0), n
    assert len({s for s, _ in got.values()}) == 6
    # timm's scheduler multiplies the scales into the learning rate
    opt = create_optimizer_v2(groups, "adamw", lr=1e-3)
    sched = CosineLRScheduler(opt, t_initial=10)
    sched.step_update(0)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx(sorted({1e-3 * s for s, _ in got.values()}))
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(ours, 0.05, layer_decay=0.0)


def test_finetune_overlay_uses_the_weights_eval_transform():
    import yaml

    overlay = yaml.safe_load((CONFIGS / "finetune.yaml").read_text())
    cfg = create_model("efficientformerv2_s0").pretrained_cfg
    data = overlay["data"]
    assert (data["crop_pct"], data["interpolation"]) == (cfg["crop_pct"], cfg["interpolation"])
    assert tuple(data["mean"]) == pytest.approx(cfg["mean"]) and tuple(data["std"]) == pytest.approx(cfg["std"])
    model = overlay["model"]
    assert model["pretrained_classifier"] == "drop" and model["teacher"] is None
    assert 0 < model["layer_decay"] < 1 and model["mixup"] == model["cutmix"] == 0


def test_finetune_overlay_reaches_the_optimizer(tmp_path, randomize_):
    """toy.yaml + finetune.yaml from a 224 checkpoint of another class count: a new head, the
    bias tables resampled to the toy size, per-stage learning rates in the optimizer."""
    import inspect

    from classification.module import ImageClassifier

    if "layer_decay" not in inspect.signature(ImageClassifier).parameters:
        pytest.skip("classification.module.ImageClassifier has no layer_decay argument yet")
    from backbones import save_checkpoint
    from classification.__main__ import cli
    from classification.toy_data import make_toy_classification

    root = make_toy_classification(tmp_path / "toy", seed=0, train_per_class=2, val_per_class=1, size=32)
    weights = save_checkpoint(randomize_(create_model("efficientformerv2_s0")), tmp_path / "s0.safetensors")
    c = cli(["--config", str(CONFIGS / "toy.yaml"), "--config", str(CONFIGS / "finetune.yaml"),
             "--data.root", str(root), "--model.pretrained", str(weights), "--data.num_workers", "0",
             "--data.persistent_workers", "false", "--trainer.logger", "false",
             "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    assert c.model.model.head_dist is None and c.model.model.head.out_features == c.datamodule.num_classes
    c.model._trainer = type("T", (), {"estimated_stepping_batches": 10, "max_epochs": 1, "world_size": 1,
                                      "accumulate_grad_batches": 1})()
    optimizer = c.model.configure_optimizers()["optimizer"]
    assert len({g["lr_scale"] for g in optimizer.param_groups}) == 6
    eval_tf = c.datamodule.eval_transform().transforms
    assert eval_tf[0].size == int(64 / 0.95)
