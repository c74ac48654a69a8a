"""Photos the unit tests draw (imported as a sibling module, like ``_scoring``)."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_img(path: Path, seed: int, size=(48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path
