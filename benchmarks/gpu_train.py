"""GPU training throughput: HDF5 numpy loader vs device-resident data, and share of bf16 peak.

    KERAS_BACKEND=jax python benchmarks/gpu_train.py [--rows 4096] [--steps 30] [--smoke]

For alexnet@227, mobilenet_v2@224 and resnet50@224, with mixed precision (bf16):
- ``hdf5``: model.fit fed by ``clazzify.training.data.pydataset`` (keras.utils.PyDataset reading
  contiguous HDF5 blocks on threads) - what training on real files gets;
- ``device``: the same train step on a batch already in device memory - the ceiling.
It measures the GPU's bf16 matmul peak (8192^3 GEMMs) and reports, per model, the
fraction of that peak the training step reaches (FLOPs counted from the layer shapes by
``clazzify.training.flops.forward_macs``, 2 FLOPs a MAC, x 3 for forward + backward; XLA's
cost analysis, used before, counted about 100x too few).

Runs under JAX with only keras/optree/namex added (no TensorFlow): the GPU machines
here carry JAX but not TensorFlow. ``--smoke`` runs tiny sizes on a CPU to check the
script. Writes results/gpu_train.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_random_hdf5

MODELS = (("alexnet", 227), ("mobilenet_v2", 224), ("resnet50", 224))


def matmul_peak(n: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.bfloat16)
    b = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a, b)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def bench_model(arch: str, size: int, rows: int, batch: int, steps: int, tmp: Path) -> dict:
    import jax
    import keras

    from clazzify.training.data import pydataset
    from clazzify.training.flops import forward_macs
    from clazzify.training.models import ModelSpec, build_model

    path = tmp / f"{arch}-{size}.h5"
    write_random_hdf5(path, rows, size)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_model(ModelSpec(arch, num_classes=4, image_size=size))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    loader = pydataset([path], batch, workers=8)
    model.fit(loader, epochs=1, steps_per_epoch=3, verbose=0)  # compile + warm-up
    start = time.perf_counter()
    model.fit(loader, epochs=1, steps_per_epoch=steps, verbose=0)
    hdf5_rate = steps * batch / (time.perf_counter() - start)

    x = jax.device_put(np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8))
    y = jax.device_put(np.zeros(batch, np.int32))
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss).ravel()[0])  # wait for the device
    device_rate = steps * batch / (time.perf_counter() - start)
    flops = 2 * forward_macs(model)
    keras.mixed_precision.set_global_policy("float32")
    return {"model": f"{arch}@{size}", "hdf5_images_s": hdf5_rate, "device_images_s": device_rate,
            "forward_gflops_per_image": flops / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = parser.parse_args()
    import jax

    models = [(a, 64) for a, _ in MODELS] if args.smoke else list(MODELS)
    rows, batch, steps = (64, 8, 2) if args.smoke else (args.rows, args.batch_size, args.steps)
    device = jax.devices()[0]
    peak = matmul_peak(1024 if args.smoke else 8192, 3 if args.smoke else 50)
    tmp = Path(tempfile.mkdtemp(prefix="clazzify-gpu-"))
    results = []
    for arch, size in models:
        r = bench_model(arch, size, rows, batch, steps, tmp)
        r["share_of_bf16_peak"] = r["device_images_s"] * 3 * r["forward_gflops_per_image"] * 1e9 / peak
        r["hdf5_vs_device"] = r["hdf5_images_s"] / r["device_images_s"]
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{device.device_kind}: measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s, batch {batch}\n")
    print("| model | HDF5 loader img/s | device-resident img/s | loader / device | GFLOP/img fwd "
          "| share of bf16 peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['hdf5_images_s']:,.0f} | {r['device_images_s']:,.0f} | "
              f"{r['hdf5_vs_device']:.2f} | {r['forward_gflops_per_image']:.2f} | {r['share_of_bf16_peak']:.1%} |")
    out = Path(__file__).with_name("results") / "gpu_train.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device.device_kind, "peak_bf16_flops": peak, "results": results}, indent=2))


if __name__ == "__main__":
    main()
