#!/usr/bin/env bash
# Pure-Python wheels that benchmarks/gpu_check.py needs beside torch, numpy, scipy and pillow, for a GPU machine
# that cannot reach a package index: the reference (sam2==1.1.0, without its optional CUDA extension) and
# what it imports. Build them here, carry the folder there, then:
#   pip install --no-deps --target /tmp/site WHEELS/*.whl && PYTHONPATH=/tmp/site:src python benchmarks/gpu_check.py
# Usage: bash benchmarks/gpu_wheels.sh [WHEELS folder, default .whl]   (run in the project's venv)
set -euo pipefail
out="${1:-.whl}"
mkdir -p "$out"
SAM2_BUILD_CUDA=0 pip wheel -q --no-deps --no-build-isolation -w "$out" sam2==1.1.0
pip wheel -q --no-deps -w "$out" hydra-core==1.3.* omegaconf==2.3.* iopath==0.1.10 antlr4-python3-runtime==4.9.3
ls "$out"
