"""Where `python -m classification predict` puts its results: a CSV file in the run folder.

One row per image: its path, its folder's class (empty for an image outside class folders), then
the top-k class names and their softmax scores, highest first. A model with 1000 classes is
named with ImageNet-1K's classes (`timm.data.ImageNetInfo`) unless the data has 1000 names of
its own; the images may be any folder, image file or list (`classification.image_files`). The CLI adds the writer to every run (`predictions:` keys); it acts only
in `predict`, whose last line of output then names the file. When no image could be read, it
writes no file and the command fails with one line (`DataError`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, Sequence

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from .data import DataError
from .image_files import class_names

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted batch (`ImageClassifier.predict_step`'s top-k classes and scores)
    to a CSV file as it comes; afterwards `path` is the file and `summary` a line saying where it
    is (the CLI prints it last, after the progress bar's final line).

    Columns: `path`, `target`, then `top1`, `top1_score`, ... `top<k>`, `top<k>_score`.
    Class names: ImageNet-1K's for a 1000-class model (unless the DataModule names 1000 classes
    of its own), else the DataModule's `classes`, else class indices (`image_files.class_names`).

    Args:
        output_dir: folder of the file; None: this command's log folder (`trainer.log_dir`: the
            first logger's version folder in the run folder, or the run folder without a logger),
            so that two predict commands do not overwrite each other's file.
        filename: name of the file; with several processes each writes its own share to
            `<stem>-rank<r><suffix>`.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None
        self.summary: str | None = None
        self.rows = 0
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._classes: Sequence[str] | None = None

    def _file_path(self, trainer: Trainer) -> Path:
        folder = Path(self.output_dir if self.output_dir is not None else trainer.log_dir or trainer.default_root_dir)
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_name(f"{name.stem}-rank{trainer.global_rank}{name.suffix}")
        return folder / name

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path = self._file_path(trainer)  # opened with the first prediction: no image read, no file
        data_classes = getattr(trainer.datamodule, "classes", None)
        num_classes = getattr(getattr(pl_module, "model", pl_module), "num_classes", None)
        self._classes = class_names(num_classes, data_classes) if num_classes else data_classes
        self.rows = 0
        self.summary = None

    def _name(self, index: int) -> str:
        if index < 0:  # an image outside class folders: no target
            return ""
        return self._classes[index] if self._classes is not None and index < len(self._classes) else str(index)

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if prediction is None:  # every image of the batch was unreadable
            return
        classes, scores = prediction["classes"].tolist(), prediction["scores"].tolist()
        targets = prediction["target"].tolist()
        paths = prediction.get("paths")
        if paths is None:  # a dataset without paths: the images' positions in it
            paths = [str(i) for i in batch_indices] if batch_indices is not None else [""] * len(targets)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", newline="")
            self._writer = csv.writer(self._file)
            k = len(classes[0])
            self._writer.writerow(["path", "target", *[f"top{i}{s}" for i in range(1, k + 1)
                                                       for s in ("", "_score")]])
        for path, target, top, score in zip(paths, targets, classes, scores):
            cells = [c for i, p in zip(top, score) for c in (self._name(i), f"{p:.6f}")]
            self._writer.writerow([path, self._name(target), *cells])
        self.rows += len(targets)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """No image could be read: a `DataError` (one line at the command line), nothing written."""
        if self._file is None and trainer.world_size == 1:
            datamodule = getattr(trainer, "datamodule", None)
            dataset = getattr(datamodule, "datasets", {}).get("predict")
            count = f" {len(dataset)}" if dataset is not None else ""
            first = dataset.samples[0][0] if dataset is not None and len(dataset) else ""
            raise DataError(f"none of the{count} images to predict on could be read (e.g. {first}): they are "
                            "damaged or not images; nothing was written")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if trainer.world_size == 1:
            self.summary = f"predict: {self.rows} images, top classes and scores written to {self.path}"
        else:
            pattern = self.path.parent / f"{Path(self.filename).stem}-rank*{Path(self.filename).suffix}"
            self.summary = f"predict: top classes and scores written by each process to {pattern}"
