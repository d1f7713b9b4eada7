"""Supernet: extraction parity, reference parameter counts, per-width BatchNorm, weight sharing,
config validation."""
import random

import pytest
import torch

from backbones import VARIANTS, EfficientFormerV2
from backbones.supernet import (EfficientFormerV2Supernet, SearchSpace, StageConfig, SubnetConfig,
                                count_subnet_params)
from conftest import REFERENCE_PARAMS as _BY_NAME
from conftest import SHORT_NAMES

REFERENCE_PARAMS = {SHORT_NAMES[name]: count for name, count in _BY_NAME.items()}   # by the short names (s0, ...)

TOY_SPACE = SearchSpace(widths=((16, 24), (24, 32), (32, 40, 48), (48, 64)), depths=(2, 2, 3, 3),
                        expansions=(2, 3, 4), stem_widths=(8, 12))


@pytest.fixture(scope="module")
def paper_supernet():
    return EfficientFormerV2Supernet(SearchSpace.default(), num_classes=1000).eval()


def toy_supernet(**kw) -> EfficientFormerV2Supernet:
    net = EfficientFormerV2Supernet(TOY_SPACE, num_classes=5, img_size=64, **kw)
    _randomize_bn(net)
    return net


def _randomize_bn(net: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so parity checks mean something."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in net.named_parameters():
        if name.endswith("gamma"):
            p.data.uniform_(0.5, 1.0, generator=g)


@pytest.mark.parametrize("variant", ["s0", "s1", "s2", "l"])
def test_default_space_contains_released_models(paper_supernet, variant):
    plain = paper_supernet.extract(variant)
    ref = VARIANTS[variant]
    assert plain.arch.stages == ref.stages and plain.arch.stem_width == ref.stem_width
    assert sum(p.numel() for p in plain.parameters()) == REFERENCE_PARAMS[variant]
    assert count_subnet_params(variant) == REFERENCE_PARAMS[variant]


def test_paper_supernet_size(paper_supernet):
    # paper Table 2: 37.1M parameters for its supernet; ours at its largest sub-network:
    largest = count_subnet_params(paper_supernet.space.largest())
    assert 30e6 < largest < 40e6


def test_extraction_parity_released_s0(paper_supernet):
    x = torch.randn(1, 3, 96, 96)
    paper_supernet.set_subnet("s0")
    with torch.no_grad():
        torch.testing.assert_close(paper_supernet(x), paper_supernet.extract("s0").eval()(x), rtol=0, atol=1e-6)


def test_extraction_parity_random_subnets():
    net = toy_supernet().eval()
    rng = random.Random(0)
    x = torch.randn(2, 3, 64, 64)
    configs = [TOY_SPACE.largest(), TOY_SPACE.smallest()] + [TOY_SPACE.sample(rng) for _ in range(6)]
    for config in configs:
        net.set_subnet(config)
        plain = net.extract(config)
        assert isinstance(plain, EfficientFormerV2) and not plain.training
        with torch.no_grad():
            torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in plain.parameters()) == net.count_params(config)


def test_dropped_block_passes_input_and_attention_is_trailing():
    net = toy_supernet().eval()
    stage = SubnetConfig(8, (StageConfig(16, (1,), (2,)), StageConfig(24, (0,), (2,)),
                             StageConfig(32, (0, 2), (3, 4), attention=1), StageConfig(48, (1, 2), (2, 2), 2)))
    net.set_subnet(stage)
    assert net.stages[2].active == (0, 2)
    assert not net.stages[2].blocks[0].use_attention and net.stages[2].blocks[2].use_attention
    arch = stage.to_arch()
    assert arch.depths == [1, 1, 2, 2] and [s.attention for s in arch.stages] == [0, 0, 1, 2]


def test_batchnorm_is_separate_per_width():
    net = toy_supernet().train()
    small, large = TOY_SPACE.smallest(), TOY_SPACE.largest()
    bn_small = net.stages[0].blocks[0].mlp.fc2.bn["16"]
    bn_large = net.stages[0].blocks[0].mlp.fc2.bn["24"]
    before_small = bn_small.running_mean.clone()
    before_large = bn_large.running_mean.clone()
    net.set_subnet(large)
    net(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(bn_small.running_mean, before_small)   # untouched by the wide pass
    assert bn_small.weight.grad is None
    assert not torch.equal(bn_large.running_mean, before_large)
    assert bn_large.weight.grad is not None
    net.zero_grad(set_to_none=True)
    net.set_subnet(small)
    net(torch.randn(4, 3, 64, 64)).sum().backward()
    assert not torch.equal(bn_small.running_mean, before_small)
    assert bn_large.weight.grad is None
    # FFN hidden BatchNorms are keyed by channel count: width x ratio
    assert set(net.stages[0].blocks[0].mlp.mid.bn.keys()) == {str(c) for c in TOY_SPACE.hidden_choices(0)}


def test_narrow_layers_share_the_first_filters():
    net = toy_supernet().eval()
    net.set_subnet(TOY_SPACE.smallest())
    plain_small = net.extract()
    plain_large = net.extract(TOY_SPACE.largest())
    w_small = plain_small.stages[1].blocks[0].mlp.fc1.conv.weight
    w_large = plain_large.stages[1].blocks[0].mlp.fc1.conv.weight
    torch.testing.assert_close(w_small, w_large[:w_small.shape[0], :w_small.shape[1]], rtol=0, atol=0)
    g_small = plain_small.stages[0].blocks[0].ls2.gamma
    torch.testing.assert_close(g_small, plain_large.stages[0].blocks[0].ls2.gamma[:16], rtol=0, atol=0)


def test_config_round_trip_and_validation():
    rng = random.Random(3)
    for _ in range(5):
        config = TOY_SPACE.sample(rng)
        assert SubnetConfig.from_dict(config.to_dict()) == config
    assert SearchSpace.from_dict(TOY_SPACE.to_dict()) == TOY_SPACE
    net = toy_supernet()
    bad_width = SubnetConfig(8, (StageConfig(20, (0,), (2,)),) + TOY_SPACE.smallest().stages[1:])
    with pytest.raises(ValueError, match="width 20 is not a choice"):
        net.set_subnet(bad_width)
    empty = SubnetConfig(8, (StageConfig(16, (), ()),) + TOY_SPACE.smallest().stages[1:])
    with pytest.raises(ValueError, match="at least one block"):
        net.set_subnet(empty)
    too_deep = SubnetConfig(8, TOY_SPACE.smallest().stages[:3] + (StageConfig(48, (0, 3), (2, 2)),))
    with pytest.raises(ValueError, match="blocks"):
        net.set_subnet(too_deep)
    attention_early = SubnetConfig(8, (StageConfig(16, (0,), (2,), 1),) + TOY_SPACE.smallest().stages[1:])
    with pytest.raises(ValueError, match="attention"):
        net.set_subnet(attention_early)
