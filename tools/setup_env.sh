#!/usr/bin/env bash
# Creates .venv with the pinned stack of the jobs named (idempotent: a stamp per job records
# what was installed, so a second run installs nothing).
#
#   bash tools/setup_env.sh [JOB ...]     JOB: core classification dense export test all
#                                         (default: all)
#
# Each job installs its own list, requirements/<job>.txt, on top of core (torch, torchvision,
# timm). `dense` first builds mmcv 2.1.0 with ops: it has no wheel for torch 2.14 on PyPI, so it
# is built once from source in C++20 and the wheel is cached outside the repository in a folder
# keyed by the mmcv and torch versions (EFV2_CACHE moves the cache root, default
# ~/.cache/efficientformerv2), under the Python tag of its wheel name (cp311, ...).
# Needs: python3 >= 3.10 with venv and pip; for `dense`, a C++20 compiler (g++ >= 10) with the
# Python headers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=$PWD/$VENV/bin/python
TORCH=2.14.1
TORCHVISION=0.29.1
MMCV=2.1.0
CACHE=${EFV2_CACHE:-$HOME/.cache/efficientformerv2}/mmcv-$MMCV-torch$TORCH
JOBS=("$@")
[ ${#JOBS[@]} -gt 0 ] || JOBS=(all)

expanded=()
for job in "${JOBS[@]}"; do
  case "$job" in
    all) expanded+=(classification dense export test) ;;
    core|classification|dense|export|test) expanded+=("$job") ;;
    *) echo "setup_env: unknown job '$job'; use core, classification, dense, export, test or all" >&2; exit 2 ;;
  esac
done

stamp_of() { echo "$VENV/.installed-$1"; }
want_of() { cat "requirements/core.txt" "requirements/$1.txt" setup.py tools/setup_env.sh 2>/dev/null | sha256sum | cut -c1-16; }
done_() { [ -f "$(stamp_of "$1")" ] && [ "$(cat "$(stamp_of "$1")")" = "$(want_of "$1")" ]; }

todo=()
for job in core "${expanded[@]}"; do
  done_ "$job" || todo+=("$job")
done
[ ${#todo[@]} -gt 0 ] || exit 0

python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10)' 2>/dev/null || {
  echo "setup_env: needs python3 >= 3.10 with the venv module (e.g. apt install python3-venv)" >&2; exit 2; }
[ -x "$PY" ] || python3 -m venv "$VENV"
PYTAG=cp$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
pip_() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

install_core() {
  "$PY" -c "import torch, torchvision; assert torch.__version__.startswith('$TORCH')" 2>/dev/null \
    || pip_ "torch==$TORCH" "torchvision==$TORCHVISION"
  # torch 2.14 wants setuptools >= 77; mmcv's setup.py needs pkg_resources (gone in 82).
  pip_ "setuptools>=77,<82" wheel ninja
  pip_ -r requirements/core.txt
  pip_ --no-deps --no-build-isolation -e .
}

install_mmcv() {
  "$PY" -c "from mmcv.ops import nms, roi_align" 2>/dev/null && return 0
  if ! ls "$CACHE"/mmcv-$MMCV-$PYTAG-*.whl >/dev/null 2>&1; then
    echo "setup_env: building mmcv $MMCV with ops for torch $TORCH (9-17 minutes, once per machine)"
    mkdir -p "$CACHE"
    WORK=$(mktemp -d)
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
      --no-build-isolation "mmcv==$MMCV" -d "$WORK"
    tar -xzf "$WORK"/mmcv-$MMCV.tar.gz -C "$WORK"
    sed -i 's/-std=c++17/-std=c++20/g' "$WORK"/mmcv-$MMCV/setup.py
    (cd "$WORK"/mmcv-$MMCV && MMCV_WITH_OPS=1 MAX_JOBS=2 "$PY" -m pip wheel -q \
       --no-deps --no-build-isolation --no-cache-dir -w "$CACHE" .)
    rm -rf "$WORK"
  fi
  pip_ --no-deps "$CACHE"/mmcv-$MMCV-$PYTAG-*.whl
  # mmcv's own runtime dependencies (addict, yapf, ...), without letting pip touch mmcv
  pip_ addict packaging pillow pyyaml yapf opencv-python "mmengine==0.10.7"
  "$PY" -c "from mmcv.ops import nms, roi_align"
}

for job in "${todo[@]}"; do
  case "$job" in
    core) install_core ;;
    dense) install_mmcv; pip_ -r requirements/dense.txt ;;
    *) pip_ -r "requirements/$job.txt" ;;
  esac
  want_of "$job" > "$(stamp_of "$job")"
  echo "setup_env: $job ready in $VENV"
done
