"""Parameters and GMACs (deploy.profile and tools/model_profile.py) against the reference figures."""
import pytest

from backbones import create_model
from conftest import REFERENCE_GMACS, REFERENCE_PARAMS
from tool_runner import load_tool, run_tool


@pytest.mark.parametrize("name", sorted(REFERENCE_GMACS))
def test_profile_gmacs_match_reference(name):
    r = load_tool("model_profile").profile(create_model(name), (224, 224))
    assert abs(r["gmacs"] - REFERENCE_GMACS[name]) / REFERENCE_GMACS[name] < 0.01
    assert r["params"] == REFERENCE_PARAMS[name]
    assert r["params_deploy"] < r["params"]


def test_profile_tool_cli():
    out = run_tool("model_profile", "--model", "efficientformerv2_s0")
    assert out.returncode == 0, out.stderr
    assert "params 3,600,256" in out.stdout and "GMACs 0.396" in out.stdout
