#!/usr/bin/env bash
# Create the virtual environment and install xdt with its test extra. torch is installed first, pinned, so that no
# later resolution swaps the CPU build for a multi-GB CUDA one (PIP_CONSTRAINT keeps it pinned on every pip call).
# Usage: bash scripts/setup.sh [VENV_DIR]    (TORCH_VERSION=... to pin another torch)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
torch_version=${TORCH_VERSION:-2.13.0}

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==${torch_version}"
printf 'torch==%s\n' "$torch_version" > "$venv/constraints.txt"
PIP_CONSTRAINT="$venv/constraints.txt" "$venv/bin/pip" install --quiet -e '.[test]'
"$venv/bin/python" -c "import torch, deepspeed, transformers, datasets, seqeval; \
print('torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__, \
'| datasets', datasets.__version__)"
# DeepSpeed compiles a C++ op the first time a CPU run starts: install (root, apt) or check the compiler, ninja and
# Python.h, and build the op now. When that cannot be done it says so in one line; the rest of xdt still works.
bash scripts/toolchain.sh "$venv" || true
touch "$venv/.installed"
