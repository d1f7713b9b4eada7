"""The import structure: no two project modules import each other, and the image-folder reader
that prediction and export use stays free of Lightning."""
import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("backbones", "classification", "deploy", "openmmlab", "detection", "segmentation", "imagefolder")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules `path` (module `name`) imports, at module level or inside functions:
    `from P import X` counts as importing P.X where that is a module, else P."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                package = ".".join(base + ([node.module] if node.module else []))
            else:
                package = node.module
            targets = [f"{package}.{a.name}" if f"{package}.{a.name}" in modules else package for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_two_project_modules_import_each_other():
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    assert "backbones.checkpoint" in graph["backbones.builder"]  # the check sees relative imports
    circles = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph[b]})
    assert circles == []


def test_image_files_does_not_import_lightning():
    code = ("import sys, classification.image_files, deploy.calibration; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
