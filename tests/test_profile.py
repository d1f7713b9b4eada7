"""Parameters and GMACs (deploy.profile and tools/model_profile.py) against the reference figures."""
import pytest

from backbones import create_model
from conftest import DEPLOY_PARAMS, REFERENCE_GMACS, REFERENCE_PARAMS
from tool_runner import load_tool, run_tool


@pytest.mark.parametrize("name", sorted(REFERENCE_GMACS))
def test_profile_gmacs_match_reference(name):
    r = load_tool("model_profile").profile(create_model(name), (224, 224))
    assert abs(r["gmacs"] - REFERENCE_GMACS[name]) / REFERENCE_GMACS[name] < 0.01
    assert r["params"] == REFERENCE_PARAMS[name]
    assert r["params_deploy"] == DEPLOY_PARAMS[name] < r["params"]   # the fused deploy form (model.fuse())


def test_profile_tool_cli():
    out = run_tool("model_profile", "--model", "efficientformerv2_s0")
    assert out.returncode == 0, out.stderr
    # the figures of profile() above, as the tool prints them
    assert "params 3,600,256 (deploy form 3,371,960)" in out.stdout and "GMACs 0.396" in out.stdout
