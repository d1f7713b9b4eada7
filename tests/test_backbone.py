"""The EfficientFormerV2 family: exactness against timm, any input size, features, fuse, gradients."""
import copy

import pytest
import timm
import torch

from backbones import (VARIANTS, Arch, EfficientFormerV2, StageArch, create_model, list_models,
                       load_checkpoint)
from backbones.layers import OffsetAttentionBias, resize_bilinear
from conftest import REFERENCE_PARAMS, WIDTHS

NAMES = sorted(REFERENCE_PARAMS)


def test_registered_names():
    assert list_models() == NAMES


def test_each_variant_is_named_once():
    """The factories and create_model's registry (backbones.builder) derive from the one table of
    backbones.arch; the network file defines the network only."""
    import backbones
    import backbones.arch as arch_module
    import backbones.builder as builder
    import backbones.efficientformer_v2 as model_module
    from backbones.arch import resolve_arch

    assert [v.model_name for v in arch_module.RELEASED] == [f"efficientformerv2_{k}" for k in VARIANTS]
    assert sorted(builder.MODEL_FACTORIES) == NAMES
    for v in arch_module.RELEASED:
        factory = getattr(backbones, v.model_name)
        assert factory is getattr(builder, v.model_name) is builder.MODEL_FACTORIES[v.model_name]
        assert factory.__name__ == v.model_name and v.summary in factory.__doc__
        assert not hasattr(model_module, v.model_name)
        with torch.device("meta"):
            assert factory().arch == VARIANTS[v.key] == resolve_arch(v.model_name)
    assert not hasattr(model_module, "load_pretrained") and not hasattr(model_module, "MODEL_FACTORIES")


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_reference(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_timm(name, randomize_):
    reference = randomize_(timm.create_model(name)).eval()
    model = create_model(name).eval()
    report = load_checkpoint(model, reference.state_dict())
    assert report.ok and report.source_format == "timm"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    assert diff < 1e-5


def test_bias_at_training_grid_is_the_fixed_table(randomize_):
    """At the training grid the resolution-free bias equals the reference's indexed table."""
    reference = randomize_(timm.create_model("efficientformerv2_s0")).eval()
    model = create_model("efficientformerv2_s0").eval()
    load_checkpoint(model, reference.state_dict())
    ref_attn = reference.stages[2].blocks[5].token_mixer
    ours = model.stages[2].blocks[5].token_mixer.pos_bias
    expected = ref_attn.attention_biases[:, ref_attn.attention_bias_idxs]
    assert torch.equal(ours((7, 7), (7, 7)), expected)
    ref_down = reference.stages[3].downsample.attn
    ours_down = model.stages[3].downsample.attn.pos_bias
    expected = ref_down.attention_biases[:, ref_down.attention_bias_idxs]
    assert torch.equal(ours_down((7, 7), (14, 14)), expected)


def test_bias_resized_in_offset_space():
    bias = OffsetAttentionBias(num_heads=2, resolution=4)
    with torch.no_grad():
        bias.attention_biases.copy_(torch.arange(32, dtype=torch.float32).view(2, 16))
    table = bias.table((7, 10))
    assert table.shape == (2, 7, 10)
    # offsets 0 and the largest offset keep their trained values; the rest interpolate
    assert table[0, 0, 0] == 0 and table[0, -1, -1] == 15 and table[1, 0, -1] == 16 + 3
    b = bias((7, 10), (7, 10))
    assert b.shape == (2, 70, 70)
    # symmetric in the offset: bias(i, j) == bias(j, i) for a stride-1 grid
    assert torch.equal(b, b.transpose(1, 2))


@pytest.mark.parametrize("hw", [(224, 224), (256, 320), (97, 131), (33, 47), (800, 1333)])
def test_features_at_any_size(hw):
    model = create_model("efficientformerv2_s0", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *hw))
    assert len(feats) == 4
    h, w = hw
    for f, info, width in zip(feats, model.feature_info, WIDTHS["efficientformerv2_s0"]):
        s = info["reduction"]
        # each stride-2 3x3 conv with padding 1 rounds up
        expect = [h, w]
        for _ in range(s.bit_length() - 1):
            expect = [(v - 1) // 2 + 1 for v in expect]
        assert tuple(f.shape) == (1, width, *expect)
        assert info["num_chs"] == width


@pytest.mark.parametrize("name", NAMES)
def test_features_channels_and_strides(name):
    model = create_model(name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 128))
    assert [f.shape[1] for f in feats] == [WIDTHS[name][1], WIDTHS[name][3]]
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 16), (3, 4)]


@pytest.mark.parametrize("name", NAMES)
def test_fuse_parity(name, randomize_):
    model = randomize_(create_model(name)).eval()
    fused = copy.deepcopy(model).fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.stages.modules())
    assert fused.head_dist is None
    for hw in [(224, 224), (160, 208), (75, 93)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            assert (fused(x) - model(x)).abs().max().item() < 1e-4


def test_fuse_features_parity(randomize_):
    model = randomize_(create_model("efficientformerv2_s1", features_only=True)).eval()
    fused = copy.deepcopy(model).fuse()
    x = torch.randn(1, 3, 131, 97)
    with torch.no_grad():
        for a, b in zip(model(x), fused(x)):
            assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name, num_classes=5, drop_path_rate=0.1).train()
    model.set_distilled_training(True)
    out, out_dist = model(torch.randn(2, 3, 64, 80))
    (out.square().mean() + out_dist.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_averages_the_two_heads(randomize_):
    model = randomize_(create_model("efficientformerv2_s0", num_classes=7)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = (model.head(pooled) + model.head_dist(pooled)) / 2
        assert torch.allclose(model(x), expected)
    assert model(x).shape == (1, 7)


def test_arch_is_data():
    arch = Arch.from_dict({"widths": [16, 24, 40, 64], "expansions": [[2], [3, 2], [4, 4, 3], [2, 4]],
                           "attention": [0, 0, 1, 2]})
    model = EfficientFormerV2(arch, num_classes=3, distillation=False).eval()
    assert model.arch.depths == [1, 2, 3, 2]
    assert sum(b.token_mixer is not None for b in model.stages[2].blocks) == 1
    assert model.stages[1].blocks[0].mlp.fc1.conv.out_channels == 72
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 3)
    assert Arch.from_dict(arch.to_dict()) == arch
    assert EfficientFormerV2("s1").arch == VARIANTS["s1"]


@pytest.mark.parametrize("bad, match", [
    ({"widths": [16, 24, 40], "expansions": [[2], [2], [2]], "attention": [0, 0, 0]}, "4 stages"),
    ({"widths": [16, 24, 40, 64], "expansions": [[2], [], [2], [2]]}, "depth >= 1"),
    ({"widths": [16, 24, 40, 64], "expansions": [[2], [2], [2], [2]], "attention": [1, 0, 0, 0]},
     "only possible in stages 3 and 4"),
    ({"widths": [16, 24, 40, 64], "expansions": [[2], [2], [2], [2]], "attention": [0, 0, 2, 0]},
     "2 attention blocks but only 1"),
    ({"widths": [16, 24, 40, 64], "expansions": [[2], [2], [2], [2]], "depth": 3}, "unknown architecture keys"),
    ({"widths": [16, 24, 40, 64]}, "expansions"),
])
def test_bad_arch_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Arch.from_dict(bad)


def test_unknown_variant_and_model():
    with pytest.raises(ValueError, match="unknown EfficientFormerV2 variant"):
        EfficientFormerV2("s9")
    with pytest.raises(ValueError, match="available"):
        create_model("efficientformerv2_xl")
    with pytest.raises(ValueError, match="out_indices"):
        create_model("efficientformerv2_s0", features_only=True, out_indices=(4,))
    assert StageArch(8, (4, 4)).depth == 2


@pytest.mark.parametrize("align_corners", [True, False])
def test_matrix_resize_equals_interpolate(align_corners):
    # the exportable resize of the shape-generic deploy form: up, down, to and from size 1
    torch.manual_seed(0)
    for src, dst in [((7, 7), (14, 14)), ((25, 42), (50, 84)), ((7, 9), (3, 4)), ((1, 5), (4, 1)), ((3, 3), (3, 3))]:
        x = torch.randn(2, 4, *src)
        want = torch.nn.functional.interpolate(x, size=dst, mode="bilinear", align_corners=align_corners)
        torch.testing.assert_close(resize_bilinear(x, dst, align_corners), want, rtol=0, atol=1e-5)
