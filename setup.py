"""EfficientFormerV2 suite: backbone family, Lightning classification and supernet search,
MMDetection/MMSegmentation downstream tasks, export and benchmark tools."""
from setuptools import find_packages, setup

CORE = ["torch>=2.6", "torchvision", "timm>=1.0", "safetensors"]
CLASSIFICATION = ["lightning>=2.4", "jsonargparse[signatures]>=4.27", "torchmetrics",
                  "tensorboard", "rich"]
DENSE = ["mmcv>=2.0,<2.2", "mmengine>=0.10", "mmdet>=3.3", "mmsegmentation>=1.2", "ftfy", "regex",
         "pycocotools"]
EXPORT = ["onnx", "onnxruntime", "onnxscript", "coremltools>=8", "executorch>=1.5", "openvino>=2026.0", "nncf"]
SEARCH = ["matplotlib", "scipy"]

setup(
    name="efficientformerv2",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["backbones*", "classification*", "openmmlab*", "detection*", "segmentation*", "deploy*"]),
    install_requires=CORE,
    extras_require={
        "classification": CLASSIFICATION + SEARCH,
        "dense": DENSE,
        "export": EXPORT,
        "all": CLASSIFICATION + DENSE + EXPORT + SEARCH,
        "test": ["pytest", "pytest-timeout"],
    },
    entry_points={"console_scripts": ["efficientformerv2-cls=classification.__main__:main"]},
)
