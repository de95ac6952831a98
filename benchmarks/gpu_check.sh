#!/usr/bin/env bash
# One prepared GPU check for a session that has the device machine (15 minutes, one H100/H200, no internet).
#
# What the GPU machine lacks, and how to carry it (see the device tool's README; run these HERE, in the repo root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl escnn==1.0.11 lie_learn pymanopt autograd
#   py3nj has no wheels on PyPI: build one for CPython 3.12 here (needs gfortran and a python3.12), e.g.
#       python3.12 -m pip wheel --no-deps -w .whl py3nj==0.2.1
#   The dataset as .npz (fashion-rot, built here by the loader): mkdir -p .data && cp ~/.cache/epdo/fashion_rot_seed0_n12000.npz .data/
#   (.data/ must be ignored too: echo /.data/ >> .git/info/exclude)
# Then call the device tool's run with carry [".whl", ".data"] and the command: bash benchmarks/gpu_check.sh
#
# The compiled kernels (epdo/nn/native: the adaptive PDO and 2x2 max pooling) are CPU-only: on CUDA the layers run
# their PyTorch paths, and the CUDA test below compares the layer with the CPU result (the compiled kernel where a C
# compiler exists).
# It prints: the CUDA tests, the layer benchmark on CUDA at batch 64 (NeuralePDO vs escnn R2Conv vs the unfold
# formulation), the training-step benchmark (the default network and escnn's at equal parameters, the paper's
# models), eager against torch.compile(fullgraph=True) of the default network (inductor emits Triton kernels for the
# layers' PyTorch path), and a short fashion-rot training with the CLI's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export EPDO_DATA="${EPDO_DATA:-$PWD/.data}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)"
python3 -m pytest -q tests/test_neural_epdo.py -k cuda
(cd benchmarks && python3 layer_speed.py --device cuda --batch 64)
(cd benchmarks && python3 model_speed.py --device cuda --batch 64 --sizes equal,paper)
(cd benchmarks && python3 compile_check.py --device cuda)
start=$(date +%s)
python3 -m epdo.train --dataset fashion-rot --device cuda --epochs 1 --limit-train 6000 --limit-test 2000 \
  --no-progress --out /tmp/gpu_run
end=$(date +%s)
echo "fashion-rot, the default network, 1 epoch of 6000 images + 2000 test: $((end - start)) s in all"
