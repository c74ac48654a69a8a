"""Uploads that are none of the classes: the model server answers ``unknown`` for them.

A frozen EfficientNet-Lite0 is trained on the synthetic demo classes with an ``ood_source``
of graphics drawn by :func:`clazzify.training.ood.synthetic_outliers` (``ood_bundle`` in
tests/conftest.py); then the real server
(``python -m clazzify.serving``) is asked about four uploads drawn here by other means: a
UI screenshot, a flower, a flat green square and a matplotlib bar chart.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from serving_support import KEY, Client, running_server, v1_body

from clazzify.core.ood import UNKNOWN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def screenshot() -> bytes:
    img = Image.new("RGB", (360, 640), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, 360, 56], fill=(33, 150, 243))
    d.text((16, 20), "Settings", fill=(255, 255, 255))
    for i, y in enumerate(range(80, 600, 64)):
        d.line([0, y + 56, 360, y + 56], fill=(220, 220, 220))
        d.text((16, y + 18), f"Option number {i}: notifications and privacy", fill=(40, 40, 40))
        d.rounded_rectangle([290, y + 14, 340, y + 38], radius=12, fill=(76, 175, 80) if i % 2 else (189, 189, 189))
    return png(img)


def flower() -> bytes:
    img = Image.new("RGB", (256, 256), (60, 120, 50))
    d = ImageDraw.Draw(img)
    for angle in np.linspace(0, 2 * np.pi, 9)[:-1]:
        cx, cy = 128 + 60 * np.cos(angle), 128 + 60 * np.sin(angle)
        d.ellipse([cx - 38, cy - 38, cx + 38, cy + 38], fill=(230, 80, 160))
    d.ellipse([98, 98, 158, 158], fill=(250, 210, 40))
    return png(img)


def flat_green() -> bytes:
    return png(Image.new("RGB", (200, 200), (40, 170, 60)))


def bar_chart() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    ax.bar(["Q1", "Q2", "Q3", "Q4"], [12, 18, 9, 22], color="#4472c4")
    ax.set_title("Revenue by quarter")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


UPLOADS = {"screenshot": screenshot, "flower": flower, "flat colour": flat_green, "chart": bar_chart}


def test_the_server_answers_unknown_for_uploads_that_are_none_of_the_classes(ood_bundle, demo_dir, tmp_path):
    in_class = {cls: sorted((demo_dir / cls).glob("synthetic-*[0-9].jpg"))[0].read_bytes()
                for cls in ("ambiance", "food", "human", "menu")}
    names = [*UPLOADS, *in_class]
    images = [make() for make in UPLOADS.values()] + list(in_class.values())
    with running_server(["--model-uri", str(ood_bundle)], tmp_path / "server.log") as port:
        client = Client(port, key=KEY)
        status, body = client.json("POST", "/v1/models/clazzify:predict", v1_body(images))
        client.close()
    assert status == 200, body
    answers = dict(zip(names, body["predictions"], strict=True))
    unknown = [name for name in UPLOADS if answers[name]["label"] == UNKNOWN]
    print({name: (a["label"], round(a["in_distribution_score"], 3)) for name, a in answers.items()})
    assert unknown == list(UPLOADS), f"answered as a class: {set(UPLOADS) - set(unknown)}"
    # Photos of the classes keep their class (and the probabilities stay over the classes).
    kept = [cls for cls in in_class if answers[cls]["label"] == cls]
    assert len(kept) >= 3, answers
    for a in answers.values():
        assert set(a["probabilities"]) == set(in_class)
        assert 0.0 <= a["in_distribution_score"] <= 1.0
