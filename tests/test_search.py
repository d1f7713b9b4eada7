"""Search: frontier legality, greedy search reaching its target, random baseline at the same budget,
MES, BatchNorm recalibration, latency-table JSON round trip."""
import json
import random

import pytest
import torch
from torch import nn

from backbones.supernet import EfficientFormerV2Supernet, SearchSpace, StageConfig, SubnetConfig
from classification.search import (MesSpec, SubnetEvaluator, Target, evaluate, frontier, greedy_search,
                                   plot_trajectory, random_baseline, recalibrate_bn)
from deploy.latency_lut import LatencyTable, build_latency_table, subnet_keys

SPACE = SearchSpace(widths=((8, 16), (16,), (16, 24), (24, 32)), depths=(1, 1, 2, 2),
                    expansions=(2, 4), stem_widths=(8,))


def _synthetic_table(space: SearchSpace) -> LatencyTable:
    """A table whose entries grow with width and expansion (no timing needed)."""
    from deploy.latency_lut import table_entries
    entries = {}
    for key, _, shape in table_entries(space, 32, num_classes=4):
        entries[key] = 0.01 * shape[1] + (0.2 if key.startswith("mhsa") else 0.0) + \
            (0.005 * float(key.split("x")[-1]) * shape[1] if key.startswith("ffn") else 0.0)
    return LatencyTable("synthetic", 32, 1, entries, space.to_dict(), num_classes=4)


@pytest.fixture(scope="module")
def evaluator():
    torch.manual_seed(0)
    net = EfficientFormerV2Supernet(SPACE, num_classes=4, img_size=32)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 4, (16,), generator=g))]
    return SubnetEvaluator(net, _synthetic_table(SPACE), val=batches, calib=batches, calib_batches=1)


def test_mes_hand_computed():
    mes = MesSpec()
    assert mes(3e6, 1.0) == pytest.approx(100.0)
    assert mes(12e6, 2.0) == pytest.approx(100 * 4 ** -0.5 * 2 ** -1)
    assert mes(0.75e6, 0.5) == pytest.approx(100 * 0.25 ** -0.5 * 0.5 ** -1)   # 400
    custom = MesSpec(u_size=1e6, u_latency=2.0, alpha_size=1.0, alpha_latency=0.5)
    assert custom(4e6, 8.0) == pytest.approx(100 * 4 ** -1 * 4 ** -0.5)


def test_params_from_modules_equal_plain_model(evaluator):
    rng = random.Random(1)
    for config in [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(5)]:
        assert evaluator.count_params(config) == evaluator.supernet.count_params(config)
        assert evaluator.count_params(config) == sum(
            p.numel() for p in evaluator.supernet.extract(config).parameters())


def test_frontier_never_breaks_the_network():
    rng = random.Random(0)
    for config in [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(20)]:
        for action, new in frontier(config, SPACE):
            SPACE.validate(new)   # raises on an empty stage, a width or expansion off the set
            assert all(s.depth >= 1 for s in new.stages), action
            assert new != config
    assert frontier(SPACE.smallest(), SPACE) == []


def test_greedy_search_reaches_target(evaluator, tmp_path):
    start = evaluator.cost(SPACE.largest())[2]
    target = Target(mes=start * 1.3)
    result = greedy_search(evaluator, target)
    assert result.reached and result.reason == "target reached"
    assert result.final.mes >= target.mes
    mes = [s.mes for s in result.steps]
    assert all(b > a for a, b in zip(mes, mes[1:]))            # every action raises the MES
    for step in result.steps:
        config = SubnetConfig.from_dict(step.config)
        SPACE.validate(config)
        assert min(s.depth for s in config.stages) >= 1
    assert result.config == SubnetConfig.from_dict(result.steps[-1].config)
    json.dumps(result.to_dict())                                # the log is plain JSON
    # a parameter target
    params_target = Target(params=evaluator.cost(SPACE.largest())[0] * 0.9)
    by_params = greedy_search(evaluator, params_target)
    assert by_params.reached and by_params.final.params <= params_target.params
    randoms = random_baseline(evaluator, target, count=3, seed=0, tolerance=0.3)
    assert len(randoms) == 3
    for r in randoms:
        assert target.mes <= r["mes"] <= target.mes * 1.3 and 0 <= r["top1"] <= 100
    png = plot_trajectory(result, randoms, tmp_path / "trajectory.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_greedy_search_stops_when_target_unreachable(evaluator):
    almost_smallest = SPACE.smallest()
    almost_smallest = SubnetConfig(8, almost_smallest.stages[:3] + (StageConfig(24, (0, 1), (2, 2), 1),))
    result = greedy_search(evaluator, Target(params=1), start=almost_smallest)
    assert not result.reached and "no action" in result.reason
    assert all(evaluator.cost(new)[2] <= result.final.mes for _, new in frontier(result.config, SPACE))


class _TwoPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.unused = nn.BatchNorm2d(4)   # like another width's BatchNorm: not in this forward
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def test_recalibration_matches_data_statistics():
    model = _TwoPath()
    data = [(torch.randn(8, 3, 2, 2) * 3 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    assert recalibrate_bn(model, data, num_batches=3) == 3
    assert not model.training and model.bn.momentum == 0.1
    with torch.no_grad():
        feats = torch.cat([model.conv(x) for x, _ in data])
    torch.testing.assert_close(model.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert torch.equal(model.unused.running_mean, torch.zeros(4))
    acc, loss = evaluate(model, data)
    with torch.no_grad():
        expected = 100.0 * (model(torch.cat([x for x, _ in data])).argmax(-1) == 0).float().mean().item()
    assert acc == pytest.approx(expected)
    assert loss > 0


def test_latency_table_round_trip(tmp_path):
    space = SearchSpace(widths=((8,), (8, 16), (16,), (16,)), depths=(1, 1, 1, 1), expansions=(2,), stem_widths=(8,))
    table = build_latency_table(space, img_size=32, threads=1, warmup=1, runs=2, num_classes=3)
    assert set(table.entries) >= set(subnet_keys(space.largest()))
    path = table.save(tmp_path / "lut.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.predict(space.largest()) == pytest.approx(sum(table.entries[k] for k in subnet_keys(space.largest())))
    path.write_text(json.dumps({**table.to_dict(), "entries": {"stem:8-8": -1.0}}))
    with pytest.raises(ValueError, match="not non-negative"):
        LatencyTable.load(path)
    with pytest.raises(KeyError, match="rebuild"):
        _synthetic_table(space).predict(SPACE.largest())
