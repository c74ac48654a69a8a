"""GPU training throughput: the compiled step with and without augmentation, the HDF5 loader
against it, FLOPs as a share of the measured bf16 peak, and time per epoch at scale.

    KERAS_BACKEND=jax python benchmarks/gpu_train.py [--rows 2048] [--steps 20] [--batch-size 128]
    KERAS_BACKEND=jax python benchmarks/gpu_train.py --scale [--scale-rows 200000]
    python benchmarks/gpu_train.py --smoke          # everything tiny, on a CPU, ~2 min

For alexnet@227, mobilenet_v2@224 and resnet50@224, mixed precision per
``clazzify.training.train.precision_policy`` (bf16 on Ampere and later):
- ``device, no aug``: ``train_on_batch`` on a batch already in device memory, the model
  built with ``augment=False`` - the ceiling;
- ``device, pipeline's model``: the same with the augmentation inside (the model the
  pipeline trains); target >= 0.8x the first;
- ``loader ceiling``: ``HDF5Batches.read`` on a pool of threads, no model: what the input
  pipeline can deliver on this machine's cores (target >= 1.0x the device rate);
- ``fit through loader``: ``model.fit`` on ``clazzify.training.data.pydataset`` - training
  on real files, end to end;
- ``jit``: whether Keras kept ``jit_compile`` on (it turns it off, with a warning, when a
  layer does not support XLA);
- GFLOP: counted from the layer shapes (``clazzify.training.flops``), 2 FLOPs a MAC, x 3
  for forward + backward, as a share of the bf16 matmul peak measured in the same run.

``--scale`` writes a synthetic HDF5 file of ``--scale-rows`` photos at 128 px and trains
the pipeline's ``--preset scratch`` (MobileNetV2@128 from scratch, the default issue 14
measured: its batch size, learning rate, label smoothing and class weights) for one epoch
with ``train_model`` itself, reporting the time per epoch. ``--real DIR`` trains the same
for 40 epochs (patience 15) on the real photos' HDF5 files in DIR (train/val/test.h5 as
``build_hdf5`` writes them at 128 px; ``--pack-real DIR`` makes them here, gzip-compressed
so they travel to the GPU machine) and reports the time and the test accuracy with
per-class recall. ``--smoke`` runs all of it at tiny sizes to check the
script. Runs under JAX with only keras/optree/namex added (the GPU machines here carry
JAX but not TensorFlow or MLflow). Writes results/gpu_train.json (or ``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import write_random_hdf5

MODELS = (("alexnet", 227), ("mobilenet_v2", 224), ("resnet50", 224))
# The pipeline's `--preset scratch` (pipelines/train.py): MobileNetV2 trained from scratch at
# 128 px, the pipeline's default when issue 14 measured it. --scale and --real train it. (The
# default is now a frozen, packaged EfficientNet-Lite0@224 with a logistic-regression head:
# feature extraction, not a training step, and 224 px photos too large to carry.)
SCRATCH = {"architecture": "mobilenet_v2", "image_size": 128, "batch_size": 32, "learning_rate": 0.002,
           "label_smoothing": 0.1, "class_weighting": "balanced"}


def matmul_peak(n: int, repeats: int) -> float:
    """bf16 FLOP/s of an n x n x n matrix product on the first device."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a, b)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def device_rate(model, batch: int, size: int, steps: int) -> float:
    """Images/s of train_on_batch on one batch already in device memory."""
    import keras

    x = keras.ops.convert_to_tensor(np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), np.uint8))
    y = keras.ops.convert_to_tensor(np.zeros(batch, np.int32))
    model.train_on_batch(x, y)  # compile
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss).ravel()[0])  # wait for the device
    return steps * batch / (time.perf_counter() - start)


def loader_ceiling(path: Path, batch: int, workers: int, batches: int) -> float:
    """Images/s the HDF5 loader delivers on ``workers`` threads, no model."""
    from clazzify.training.data import HDF5Batches

    reader = HDF5Batches([path], batch, shuffle=True, seed=1)
    n = min(batches, len(reader))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: reader.read(0, i), range(min(n, 2 * workers))))  # warm: handles, page cache
        start = time.perf_counter()
        rows = sum(len(y) for _, y in pool.map(lambda i: reader.read(1, i), range(n)))
    return rows / (time.perf_counter() - start)


def build(arch: str, size: int, augment: bool):
    import keras

    from clazzify.training.models import ModelSpec, build_model

    model = build_model(ModelSpec(arch, num_classes=4, image_size=size, augment=augment))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    assert isinstance(model, keras.Model)
    return model


def bench_model(arch: str, size: int, rows: int, batch: int, steps: int, workers: int, tmp: Path) -> dict:
    from clazzify.training.data import pydataset
    from clazzify.training.flops import forward_macs

    plain = build(arch, size, augment=False)
    plain_rate = device_rate(plain, batch, size, steps)
    model = build(arch, size, augment=True)
    jit = bool(model.jit_compile)
    aug_rate = device_rate(model, batch, size, steps)

    path = tmp / f"{arch}-{size}.h5"
    write_random_hdf5(path, rows, size)
    ceiling = loader_ceiling(path, batch, workers, rows // batch)
    loader = pydataset([path], batch, workers=workers, max_queue_size=4 * workers)
    fit_steps = min(steps, len(loader) - 3)
    model.fit(loader, epochs=1, steps_per_epoch=3, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(loader, epochs=1, steps_per_epoch=fit_steps, verbose=0)
    fit_rate = fit_steps * batch / (time.perf_counter() - start)
    path.unlink()
    return {"model": f"{arch}@{size}", "jit_compile": jit, "device_no_aug_images_s": plain_rate,
            "device_images_s": aug_rate, "aug_vs_no_aug": aug_rate / plain_rate,
            "loader_ceiling_images_s": ceiling, "loader_vs_device": ceiling / aug_rate,
            "fit_loader_images_s": fit_rate, "fit_loader_vs_device": fit_rate / aug_rate,
            "forward_gflop_per_image": 2 * forward_macs(plain) / 1e9}


def bench_scale(rows: int, image_size: int, batch_size: int, tmp: Path) -> dict:
    """One epoch of ``--preset scratch`` on ``rows`` synthetic photos, through train_model."""
    from clazzify.training.train import TrainConfig, train_model

    data = tmp / "scale"
    data.mkdir()
    start = time.perf_counter()
    write_random_hdf5(data / "train.h5", rows, image_size)
    write_random_hdf5(data / "val.h5", max(batch_size, rows // 100), image_size)
    written = time.perf_counter() - start
    fields = {k: v for k, v in SCRATCH.items() if k != "image_size"}
    cfg = TrainConfig(**{**fields, "batch_size": batch_size}, epochs=1, patience=0, onnx=False,
                      init_weights=None, frozen_backbone=False, calibrate=False)
    result = train_model(data, tmp / "scale-out", cfg, verbose=2)
    for f in data.iterdir():
        f.unlink()
    return {"rows": rows, "image_size": image_size, "batch_size": batch_size, "architecture": cfg.architecture,
            "seconds_per_epoch": result.seconds, "images_s": rows / result.seconds,
            "forty_epochs_minutes": 40 * result.seconds / 60, "hdf5_write_seconds": written,
            "devices": result.devices}


def bench_real(data: Path, tmp: Path, epochs: int) -> dict:
    """``--preset scratch`` on the real photos' HDF5 files: fit time and test accuracy."""
    import h5py
    import keras

    from clazzify.training.data import HDF5Batches
    from clazzify.training.train import TrainConfig, train_model

    fields = {k: v for k, v in SCRATCH.items() if k != "image_size"}
    cfg = TrainConfig(**fields, epochs=epochs, patience=15, onnx=False, init_weights=None, frozen_backbone=False)
    result = train_model(data, tmp / "real-out", cfg, verbose=2)
    model = keras.models.load_model(result.bundle_dir / "model.keras", compile=False)
    test = HDF5Batches([data / "test.h5"], 256, shuffle=False)
    pred, true = [], []
    for i in range(len(test)):
        images, labels = test.read(0, i)
        pred.append(np.asarray(model.predict_on_batch(images)).argmax(1))
        true.append(labels)
    pred, true = np.concatenate(pred), np.concatenate(true)
    with h5py.File(data / "test.h5") as f:
        classes = json.loads(f.attrs["class_names"])
    recall = {c: float((pred[true == i] == i).mean()) for i, c in enumerate(classes) if (true == i).any()}
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "fit_seconds": result.seconds,
            "test_accuracy": float((pred == true).mean()), "recall": recall, "test_images": len(true),
            "best_val_accuracy": result.best_val_accuracy, "devices": result.devices}


def pack_real(dest: Path, source: Path) -> None:
    """Ingest the real photos (the pipeline's seed) and write gzip-compressed 128 px HDF5
    splits into ``dest``, small enough to carry to the GPU machine. Needs the full install."""
    import h5py

    from clazzify.training.ingest import IngestConfig, ingest_images
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5

    work = Path(tempfile.mkdtemp(prefix="clazzify-real-"))
    ingest_images(str(source), work / "manifest.csv", work / "ingest", IngestConfig(seed=42), progress=False)
    paths = build_hdf5(work / "manifest.csv", work / "data", PreprocessConfig(image_size=SCRATCH["image_size"]),
                       progress=False)
    dest.mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        with h5py.File(path) as src, h5py.File(dest / f"{split}.h5", "w") as out:
            for name, data in src.items():
                kwargs = {"compression": "gzip", "compression_opts": 6, "chunks": (32, *data.shape[1:])} \
                    if name == "images" else {}
                out.create_dataset(name, data=data[:], **kwargs)
            out.attrs.update(dict(src.attrs))
        print(split, (dest / f"{split}.h5").stat().st_size / 1e6, "MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="rows of each model's synthetic HDF5 file")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 4, help="loader threads")
    parser.add_argument("--models", default=",".join(f"{a}@{s}" for a, s in MODELS),
                        help="comma-separated arch@size; empty skips the per-model table")
    parser.add_argument("--scale", action="store_true", help="also one epoch of --preset scratch at scale")
    parser.add_argument("--scale-rows", type=int, default=200_000)
    parser.add_argument("--scale-batch-size", type=int, default=SCRATCH["batch_size"])
    parser.add_argument("--real", type=Path, help="HDF5 folder of the real photos: 40 epochs of --preset scratch")
    parser.add_argument("--real-epochs", type=int, default=40)
    parser.add_argument("--pack-real", type=Path, help="write the real photos' HDF5 files here, then exit")
    parser.add_argument("--photos", type=Path, default=None, help="the real photos for --pack-real "
                        "(default: ../shared/datasets/restaurant-photos beside the checkout)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "gpu_train.json")
    args = parser.parse_args()
    if args.pack_real:
        from common import PHOTOS

        pack_real(args.pack_real, args.photos or PHOTOS)
        return
    import jax
    import keras

    from clazzify.training.train import gpus, precision_policy

    models = [(a, int(s)) for a, s in (m.split("@") for m in args.models.split(",") if m)]
    rows, batch, steps, scale_rows, scale_size = args.rows, args.batch_size, args.steps, args.scale_rows, 128
    if args.smoke:
        models = [(a, 32) for a, _ in models]
        rows, batch, steps, scale_rows, scale_size = 64, 8, 2, 256, 32
    policy = precision_policy("auto", [cc for _, cc in gpus()])
    device = jax.devices()[0]
    peak = matmul_peak(1024 if args.smoke else 8192, 3 if args.smoke else 50)
    print(f"{device.device_kind} ({keras.backend.backend()}, {policy}): bf16 matmul peak {peak / 1e12:.1f} TFLOP/s",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="clazzify-gpu-"))
    results = []
    for arch, size in models:
        keras.mixed_precision.set_global_policy(policy)
        r = bench_model(arch, size, rows, batch, steps, args.workers, tmp)
        keras.mixed_precision.set_global_policy("float32")
        for key in ("device_no_aug", "device"):
            r[f"{key}_share_of_peak"] = r[f"{key}_images_s"] * 3 * r["forward_gflop_per_image"] * 1e9 / peak
        results.append(r)
        print(json.dumps(r), flush=True)
    scale = None
    if args.scale or args.smoke:
        scale = bench_scale(scale_rows, scale_size, 8 if args.smoke else args.scale_batch_size, tmp)
        print(json.dumps(scale), flush=True)
    real = None
    if args.smoke and not args.real:  # the real-photo path on tiny synthetic splits
        args.real, args.real_epochs = tmp / "real-smoke", 1
        args.real.mkdir()
        for split in ("train", "val", "test"):
            write_random_hdf5(args.real / f"{split}.h5", 32, 32)
    if args.real:
        real = bench_real(args.real, tmp, args.real_epochs)
        print(json.dumps(real), flush=True)

    print(f"\n{device.device_kind}, {policy}, batch {batch}, bf16 peak {peak / 1e12:.1f} TFLOP/s, "
          f"{args.workers} loader threads\n")
    if results:
        print("| model | jit | device, no aug img/s | device, pipeline's model img/s | aug / no aug "
              "| loader ceiling img/s | loader / device | fit via loader img/s | GFLOP/img fwd "
              "| share of peak (no aug / aug) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['model']} | {'on' if r['jit_compile'] else 'OFF'} | {r['device_no_aug_images_s']:,.0f} "
                  f"| {r['device_images_s']:,.0f} | {r['aug_vs_no_aug']:.2f} | {r['loader_ceiling_images_s']:,.0f} "
                  f"| {r['loader_vs_device']:.2f} | {r['fit_loader_images_s']:,.0f} "
                  f"| {r['forward_gflop_per_image']:.3f} "
                  f"| {r['device_no_aug_share_of_peak']:.1%} / {r['device_share_of_peak']:.1%} |")
    if scale:
        print(f"\nscale: {scale['architecture']}@{scale['image_size']}, {scale['rows']:,} synthetic photos, "
              f"batch {scale['batch_size']}: {scale['seconds_per_epoch']:.1f} s/epoch "
              f"({scale['images_s']:,.0f} img/s; 40 epochs = {scale['forty_epochs_minutes']:.1f} min)")
    if real:
        print(f"\nreal photos: {real['epochs_run']} epochs (best {real['best_epoch']}) in {real['fit_seconds']:.0f} s, "
              f"test accuracy {real['test_accuracy']:.3f} on {real['test_images']}, recall {real['recall']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device.device_kind, "backend": keras.backend.backend(),
                                    "policy": policy, "peak_bf16_flops": peak, "batch_size": batch,
                                    "results": results, "scale": scale, "real": real,
                                    "smoke": args.smoke}, indent=2))


if __name__ == "__main__":
    main()
