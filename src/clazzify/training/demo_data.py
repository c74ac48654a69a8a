"""A small, deterministic, procedurally drawn 4-class photo set (SYNTHETIC).

No photo set can ship with the project, so the demo and the tests draw their
own: plates of food, rooms (ambiance), printed menus and faces (human). Every
file name starts with ``synthetic-`` so nobody mistakes them for real data.
Optionally a few bad files are added to show quarantine and de-duplication.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clazzify import DEMO_CLASSES
from clazzify.core.errors import ConfigError


def _rgb(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)  # type: ignore[return-value]


def draw_food(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), _jitter(rng, (120, 85, 60), 40))  # wooden table
    d = ImageDraw.Draw(img)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    r = min(w, h) * rng.uniform(0.32, 0.45)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_jitter(rng, (235, 235, 230), 15))
    for _ in range(int(rng.integers(4, 9))):  # the food on the plate
        fr = r * rng.uniform(0.15, 0.35)
        fx, fy = cx + rng.uniform(-0.5, 0.5) * r, cy + rng.uniform(-0.5, 0.5) * r
        palette = [(200, 60, 30), (230, 170, 40), (60, 150, 50), (150, 80, 40)]
        colour = _jitter(rng, palette[int(rng.integers(4))], 30)
        d.ellipse((fx - fr, fy - fr, fx + fr, fy + fr * rng.uniform(0.6, 1.0)), fill=colour)
    return img


def draw_ambiance(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    wall, floor = _jitter(rng, (90, 60, 50), 40), _jitter(rng, (50, 35, 30), 20)
    horizon = int(h * rng.uniform(0.5, 0.7))
    d.rectangle((0, 0, w, horizon), fill=wall)
    d.rectangle((0, horizon, w, h), fill=floor)
    for _ in range(int(rng.integers(2, 5))):  # warm lamps
        lx, ly, lr = rng.uniform(0, w), rng.uniform(0, horizon * 0.6), rng.uniform(3, 8)
        d.ellipse((lx - lr, ly - lr, lx + lr, ly + lr), fill=_jitter(rng, (255, 220, 140), 20))
    for _ in range(int(rng.integers(2, 5))):  # tables and chairs
        tx, tw = rng.uniform(0, w), rng.uniform(w * 0.1, w * 0.25)
        ty = horizon + rng.uniform(0, (h - horizon) * 0.5)
        d.rectangle((tx, ty, tx + tw, ty + 4), fill=_jitter(rng, (140, 100, 70), 25))
        d.rectangle((tx + 2, ty, tx + 5, ty + (h - ty) * 0.7), fill=_jitter(rng, (70, 50, 40), 15))
    return img.filter(ImageFilter.GaussianBlur(1.2))


def draw_menu(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), _jitter(rng, (70, 70, 70), 40))
    d = ImageDraw.Draw(img)
    mx, my = w * rng.uniform(0.05, 0.15), h * rng.uniform(0.03, 0.1)
    d.rectangle((mx, my, w - mx, h - my), fill=_jitter(rng, (245, 240, 225), 10))
    ink = _jitter(rng, (30, 30, 30), 20)
    y = my + 6
    d.rectangle((w * 0.3, y, w * 0.7, y + 4), fill=ink)  # title
    y += 10
    while y < h - my - 6:
        x0 = mx + 5
        x1 = x0 + (w - 2 * mx - 10) * rng.uniform(0.4, 0.7)
        d.rectangle((x0, y, x1, y + 1.5), fill=ink)  # dish name
        d.rectangle((w - mx - 14, y, w - mx - 5, y + 1.5), fill=ink)  # price
        y += rng.uniform(4.5, 7.0)
    tilt = float(rng.uniform(-6, 6))
    return img.rotate(tilt, resample=Image.Resampling.BILINEAR, fillcolor=_jitter(rng, (70, 70, 70), 20))


def draw_human(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), _jitter(rng, (120, 150, 170), 60))
    d = ImageDraw.Draw(img)
    skin = _jitter(rng, [(240, 200, 170), (200, 150, 110), (140, 95, 70), (90, 60, 45)][int(rng.integers(4))], 15)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.35, 0.5)
    fw, fh = min(w, h) * rng.uniform(0.18, 0.26), min(w, h) * rng.uniform(0.24, 0.32)
    d.ellipse((cx - 2 * fw, cy + fh * 0.9, cx + 2 * fw, h + fh), fill=_rgb(rng, 20, 200))  # shoulders
    d.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    hair = _jitter(rng, (40, 30, 25), 30)
    d.chord((cx - fw * 1.05, cy - fh * 1.1, cx + fw * 1.05, cy + fh * 0.2), 180, 360, fill=hair)
    for ex in (cx - fw * 0.4, cx + fw * 0.4):  # eyes
        d.ellipse((ex - 2, cy - 1, ex + 2, cy + 2), fill=(30, 30, 30))
    d.line((cx - fw * 0.35, cy + fh * 0.5, cx + fw * 0.35, cy + fh * 0.5), fill=(150, 60, 60), width=2)
    return img


DRAWERS = {"food": draw_food, "ambiance": draw_ambiance, "menu": draw_menu, "human": draw_human}


def write_demo_data(
    out_dir: Path,
    per_class: int = 40,
    *,
    size: int = 96,
    seed: int = 0,
    bad_files: bool = True,
) -> dict[str, int]:
    """Draw ``per_class`` images of each demo class into ``out_dir/<class>/``.

    Args:
        out_dir: root folder, laid out as ``<class>/<file>``.
        per_class: images per class.
        size: nominal image side; each image varies in aspect ratio around it.
        seed: the same seed writes byte-identical files.
        bad_files: also write a truncated JPEG, a text file, a tiny image and an
            exact duplicate, to exercise quarantine and de-duplication.

    Returns:
        files written per class.
    """
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    if size < 32:
        raise ConfigError(f"size must be >= 32, got {size}")
    counts: dict[str, int] = {}
    for c, name in enumerate(DEMO_CLASSES):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, c])
        for i in range(per_class):
            w = int(size * rng.uniform(1.0, 1.4))
            h = int(size * rng.uniform(1.0, 1.3))
            img = DRAWERS[name](rng, w, h)
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3))  # sensor noise
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            fmt = "png" if i % 5 == 0 else "jpg"
            img.save(folder / f"synthetic-{name}-{i:04d}.{fmt}", quality=90)
        counts[name] = per_class
    if bad_files:
        food = out_dir / "food"
        good = (food / "synthetic-food-0001.jpg").read_bytes()
        (food / "synthetic-bad-truncated.jpg").write_bytes(good[: len(good) // 2])
        (food / "synthetic-bad-notes.jpg").write_bytes(b"this is not an image\n")
        Image.new("RGB", (8, 8), (200, 0, 0)).save(out_dir / "menu" / "synthetic-bad-tiny.png")
        (food / "synthetic-duplicate-of-0001.jpg").write_bytes(good)
        counts["food"] += 3
        counts["menu"] += 1
    return counts
