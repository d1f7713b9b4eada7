"""Sandwich-rule training: one AdamW step per batch from the gradients of all four passes, and
under DDP (two CPU processes, gloo) identical sampling and identical replicas."""
import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from backbones.supernet import SearchSpace
from classification.supernet import SupernetModule, sandwich_configs

SPACE = SearchSpace(widths=((8, 16), (16,), (16, 24), (24, 32)), depths=(2, 1, 2, 2), expansions=(2, 4),
                    stem_widths=(8,))


def _module(**kw) -> SupernetModule:
    args = dict(space=SPACE.to_dict(), num_classes=3, img_size=32, lr=1e-3, weight_decay=0.05,
                warmup_epochs=0, min_lr=1e-3, label_smoothing=0.0, sample_seed=7)
    args.update(kw)
    return SupernetModule(**args)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kw)


def test_sampling_depends_on_seed_and_step_only():
    a = sandwich_configs(SPACE, seed=7, step=3)
    assert a == sandwich_configs(SPACE, seed=7, step=3)
    assert a[0] == SPACE.largest() and a[1] == SPACE.smallest() and len(a) == 4
    assert any(sandwich_configs(SPACE, seed=7, step=s)[2:] != a[2:] for s in range(4, 8))


@pytest.mark.parametrize("inplace_distill", [False, True])
def test_sandwich_step_updates_shared_weights_once(inplace_distill):
    torch.manual_seed(0)
    module = _module(inplace_distill=inplace_distill)
    reference = copy.deepcopy(module.supernet)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    _trainer(max_steps=1).fit(module, DataLoader(TensorDataset(x, y), batch_size=4))

    # the expected update: the gradients of the four passes summed, then one AdamW step
    teacher = None
    for i, config in enumerate(sandwich_configs(SPACE, 7, 0)):
        reference.set_subnet(config)
        logits = reference(x)
        if teacher is None or not inplace_distill:
            loss = F.cross_entropy(logits, y)
        else:
            loss = F.kl_div(F.log_softmax(logits, -1), teacher, reduction="batchmean", log_target=True)
        if i == 0:
            teacher = F.log_softmax(logits.detach(), -1)
        loss.backward()
    opt = module.optimizers().optimizer
    assert all(s["step"] == 1 for s in opt.state.values())          # exactly one optimizer step
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = dict(module.supernet.named_parameters())
    changed = unchanged = 0
    for name, p_ref in reference.named_parameters():
        p = names[name]
        if p_ref.grad is None:   # in no sub-network of this step: untouched
            assert torch.equal(p, p_ref), name
            unchanged += 1
            continue
        wd = 0.05 if id(p) in decayed else 0.0
        g = p_ref.grad
        expected = p_ref.detach() * (1 - 1e-3 * wd) - 1e-3 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6, msg=name)
        changed += 1
    assert changed > 0 and unchanged > 0


class _Recorder(pl.Callback):
    """Writes, per rank, the sub-networks sampled at every step and the final parameters."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.configs = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.configs.append([c.to_dict() for c in module.sandwich(trainer.global_step)])

    def on_train_end(self, trainer, module):
        rank = trainer.global_rank
        Path(self.out, f"configs{rank}.json").write_text(json.dumps(self.configs))
        torch.save({k: v.detach().clone() for k, v in module.supernet.state_dict().items()},
                   Path(self.out, f"state{rank}.pt"))


def test_ddp_two_cpu_processes_stay_identical(tmp_path):
    torch.manual_seed(0)
    module = _module()
    initial = {k: v.clone() for k, v in module.supernet.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g))
    trainer = _trainer(max_steps=3, devices=2, strategy="ddp_spawn", callbacks=[_Recorder(str(tmp_path))])
    trainer.fit(module, DataLoader(data, batch_size=4, shuffle=True))
    configs = [json.loads((tmp_path / f"configs{r}.json").read_text()) for r in (0, 1)]
    assert len(configs[0]) == 3 and configs[0] == configs[1]           # same sub-networks on both ranks
    states = [torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in (0, 1)]
    for key in states[0]:
        if key.endswith(("running_mean", "running_var")) or "num_batches" in key:
            continue
        assert torch.equal(states[0][key], states[1][key]), key      # identical replicas
    moved = [k for k in initial if not torch.equal(initial[k], states[0][k])]
    assert any("stages.3.blocks.1.mlp.fc1.conv.weight" == k for k in moved)


def test_supernet_command_line_answers_bad_input_in_one_line(tmp_path):
    """`python -m classification.supernet` ends bad input as the classification CLI does."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "classification.supernet", "fit", "--config",
                        str(root / "configs/search/supernet_toy.yaml"), "--data.root", str(tmp_path / "none"),
                        "--trainer.default_root_dir", str(tmp_path / "run")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("python -m classification.supernet: error: data root")
