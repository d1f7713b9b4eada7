"""One evaluation transform: prediction, the datamodule, int8 calibration of the benchmark and of
exports all prepare an image alike (the model's timm data configuration: size, crop,
interpolation, mean and std; 16-bit images scaled by `imagefolder.load_rgb`)."""
import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from classification.data import ImageNetDataModule
from classification.image_files import predict_images
from deploy.benchmark import Settings, _calibration_batches, prepare_subject
from deploy.calibration import calibration_images
from deploy.export import graph_transform
from deploy.models import ImageInput
from imagefolder import data_config, load_rgb

# unlike timm's defaults in every field, so that a path with its own constant is caught
CFG = {"input_size": (3, 40, 40), "interpolation": "bilinear", "crop_pct": 0.8, "crop_mode": "center",
       "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.4, 0.3)}


class Recorder(nn.Module):
    """A classifier that keeps the inputs it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg = dict(CFG)
        self.conv = nn.Conv2d(3, 2, 1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.conv(x).mean((2, 3))


def _folder(root):
    """ROOT/train/a/ with one 16-bit grayscale image (scaled, not clipped, by load_rgb)."""
    (root / "train" / "a").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = (rng.random((52, 64)) * 65535).astype(np.uint16)
    for split in ("train", "val"):
        Image.fromarray(pixels).save(root / split / "a" / "img.png")
    return root / "train" / "a" / "img.png"


def test_every_path_prepares_an_image_alike(tmp_path):
    image = _folder(tmp_path)
    reference = create_transform(**resolve_data_config(model=Recorder()), is_training=False)(load_rgb(image))
    assert reference.shape == (3, 40, 40)
    assert float(reference.std()) > 0.1  # 16-bit scaled to the full range, not clipped to white

    model = Recorder()
    predict_images(model, image)
    predicted = model.inputs[-1][0]

    dm = ImageNetDataModule(tmp_path, img_size=40, crop_pct=0.8, interpolation="bilinear",
                            mean=CFG["mean"], std=CFG["std"], num_workers=0)
    assert {k: dm.data_config()[k] for k in CFG} == data_config(model)  # a run configured as the weights
    from_datamodule = dm.eval_transform()(load_rgb(image))

    subject = prepare_subject(("rec", Recorder()), Settings(resolution=40, calibration=tmp_path, calibration_count=1))
    benchmark = _calibration_batches(subject)[0][0]

    model = Recorder()
    exported = ImageInput(model)  # the mean/std an exported graph applies
    exported(calibration_images(tmp_path, graph_transform(model, (40, 40)), count=1)[0])
    export = model.inputs[-1][0]

    for name, got in [("predict_images", predicted), ("datamodule", from_datamodule),
                      ("benchmark int8 calibration", benchmark), ("export calibration", export)]:
        assert got.shape == reference.shape, name
        assert torch.allclose(got, reference, atol=1e-5), (name, float((got - reference).abs().max()))
