"""EfficientFormerV2 suite: backbone family, Lightning classification and supernet search,
MMDetection/MMSegmentation downstream tasks, export and benchmark tools.

The pins live once, in requirements/<job>.txt; the extras are read from those files, so
`pip install -e .[classification]` installs what `make demo` installs (tools/setup_env.sh).
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def requirements(job: str) -> list[str]:
    """The requirement lines of requirements/<job>.txt (comments and -r includes skipped)."""
    lines = (HERE / "requirements" / f"{job}.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "-"))]


CORE = ["torch>=2.6", "torchvision"] + requirements("core")
CLASSIFICATION = requirements("classification")
DENSE = ["mmcv>=2.0,<2.2"] + requirements("dense")  # mmdet 3.3 and mmseg 1.2 refuse mmcv >= 2.2
EXPORT = requirements("export")

setup(
    name="efficientformerv2",
    version="0.1.0",
    description=__doc__.splitlines()[0],
    python_requires=">=3.10",
    packages=find_packages(include=["backbones*", "imagefolder*", "classification*", "openmmlab*", "detection*",
                                    "segmentation*", "deploy*"]),
    install_requires=CORE,
    extras_require={
        "classification": CLASSIFICATION,
        "dense": DENSE,
        "export": EXPORT,
        "all": CLASSIFICATION + DENSE + EXPORT,
        "test": requirements("test"),
    },
    entry_points={"console_scripts": ["efficientformerv2-cls=classification.__main__:main"]},
)
