"""MES (paper eq. 7) against the paper's Table 2 and its defining properties."""
import math

import pytest

from deploy.mes import mes_from_metrics, mobile_efficiency_score


@pytest.mark.parametrize("params_m, latency_ms, expected", [
    (3.5, 0.9, 102.9),    # MobileNetV2 x1.0 / EfficientFormerV2-S0
    (6.1, 1.1, 63.8),     # EfficientFormerV2-S1
    (12.6, 1.6, 30.5),    # EfficientFormerV2-S2
    (26.1, 2.7, 12.6),    # EfficientFormerV2-L
    (2.3, 7.3, 15.6),     # MobileViT-XS
    (5.3, 1.4, 53.7),     # EfficientNet-B0
])
def test_mes_matches_paper_table2(params_m, latency_ms, expected):
    assert round(mobile_efficiency_score(params_m * 1e6, latency_ms), 1) == expected


def test_mes_units_and_exponents():
    assert mobile_efficiency_score(3e6, 1.0) == pytest.approx(100.0)
    assert mobile_efficiency_score(3e6, 0.5) == pytest.approx(200.0)      # alpha_latency = 1
    assert mobile_efficiency_score(0.75e6, 1.0) == pytest.approx(200.0)   # alpha_size = 0.5
    assert mobile_efficiency_score(6e6, 2.0, alpha_size=1.0) == pytest.approx(25.0)
    general = mes_from_metrics({"size": 12e6, "latency": 4.0, "memory": 8.0},
                               {"size": 3e6, "latency": 1.0, "memory": 2.0},
                               {"size": 0.5, "latency": 1.0, "memory": 0.5})
    assert general == pytest.approx(100 / 2 / 4 / 2)
    assert math.isclose(mes_from_metrics({}, {}, {}), 100.0)


@pytest.mark.parametrize("kwargs", [dict(params=0, latency_ms=1.0), dict(params=1e6, latency_ms=-1.0),
                                    dict(params=1e6, latency_ms=1.0, alpha_size=0.0),
                                    dict(params=1e6, latency_ms=1.0, alpha_latency=1.5)])
def test_mes_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        mobile_efficiency_score(**kwargs)
