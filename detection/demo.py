"""The detection demo: fine-tune Mask R-CNN with an S0 backbone on the toy COCO set, evaluate it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from openmmlab.runner import build_runner, final_val_metrics, load_config, train_measures

from .toy_data import make_toy_coco


def run_det_demo(config: Path, data: Path, backbone_checkpoint: Path, work_dir: Path,
                 cfg_options: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Generate the toy COCO set under `data` if missing, train `config` from the classification
    checkpoint `backbone_checkpoint`, and return the final val bbox/segm mAP with time and memory."""
    if not (data / "annotations" / "instances_val2017.json").is_file():
        print(f"demo-det: generating the toy COCO set in {data}", flush=True)
        make_toy_coco(data)
    cfg = load_config(config, work_dir, cfg_options, data_root=data)
    cfg.model.backbone.init_cfg.checkpoint = str(backbone_checkpoint)
    runner = build_runner(cfg)
    runner.train()
    metrics = final_val_metrics(runner, ["coco/bbox_mAP", "coco/segm_mAP"])
    return {"bbox_mAP": metrics["coco/bbox_mAP"], "segm_mAP": metrics["coco/segm_mAP"], **train_measures(runner)}
