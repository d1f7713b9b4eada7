"""The segmentation demo: fine-tune Semantic FPN with an S0 backbone on the toy ADE20K set."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from openmmlab.runner import build_runner, final_val_metrics, load_config, train_measures

from .toy_data import make_toy_ade20k


def run_seg_demo(config: Path, data: Path, backbone_checkpoint: Path, work_dir: Path,
                 cfg_options: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Generate the toy ADE20K set under `data` if missing, train `config` from the classification
    checkpoint `backbone_checkpoint`, and return the final val mIoU (percent) with time and memory."""
    if not (data / "annotations" / "validation").is_dir():
        print(f"demo-seg: generating the toy ADE20K set in {data}", flush=True)
        make_toy_ade20k(data)
    cfg = load_config(config, work_dir, cfg_options, data_root=data)
    cfg.model.backbone.init_cfg.checkpoint = str(backbone_checkpoint)
    runner = build_runner(cfg)
    runner.train()
    return {"mIoU": final_val_metrics(runner, ["mIoU"])["mIoU"], **train_measures(runner)}
