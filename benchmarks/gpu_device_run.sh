#!/usr/bin/env bash
# Every GPU number of issue 14 in one run of at most 9 minutes on one GPU machine
# (NVIDIA H200, 16 cores, JAX but no Keras/TensorFlow/MLflow installed).
#
# Once, on the developer machine, in the repository root (.gitignore keeps .whl/ and .gpudata/ out):
#   for w in keras==3.15.1 optree==0.20.0 namex==0.1.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl "$w"; done
# and, for the real-photo run, the photos' HDF5 files at 128 px (gzip, 49 MB; needs ../shared):
#   .venv/bin/python benchmarks/gpu_train.py --pack-real .gpudata
# Then run it there with both carried, e.g. the device tool's
#   run(command="bash benchmarks/gpu_device_run.sh", carry=[".whl", ".gpudata"], timeout_s=570)
# Results land in $OUT (or ./gpu-results): gpu_train.json/.log (per-model table: jit, device
# rates with and without augmentation, loader ceiling, fit through the loader, share of the
# bf16 peak), gpu_scale.json/.log (one epoch of the default on 200k synthetic photos) and
# gpu_real.json/.log (the default, 40 epochs, on the real photos: time and test accuracy).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
  python3 -c "import keras" 2>/dev/null || { echo "no keras here and no .whl/ carried: see this file's header"; exit 2; }
  export PYTHONPATH=$PWD/src:$PWD
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
  | tee -a "$OUT/gpu.txt"
cd benchmarks
# Each part has its own time limit and output file, so one overrun leaves the others' numbers.
# Per-model table (XLA compiles 3 models x 2 variants), the scale epoch, the real photos.
timeout 270 python3 gpu_train.py --rows 2048 --steps 20 --batch-size 128 --out "$OUT/gpu_train.json" \
  2>&1 | grep -v "^WARNING" | tee "$OUT/gpu_train.log"
timeout 150 python3 gpu_train.py --models "" --scale --scale-rows 200000 --out "$OUT/gpu_scale.json" \
  2>&1 | grep -v "^WARNING" | tee "$OUT/gpu_scale.log"
if [ -f ../.gpudata/train.h5 ]; then
  timeout 110 python3 gpu_train.py --models "" --real ../.gpudata --out "$OUT/gpu_real.json" \
    2>&1 | grep -v "^WARNING" | tee "$OUT/gpu_real.log"
else
  echo "no .gpudata/ carried: the real-photo run is skipped (see this file's header)" | tee "$OUT/gpu_real.log"
fi
