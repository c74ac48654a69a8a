"""The original system's serving design, as the baseline of benchmarks/model_server.py.

A Flask app that loads the Keras model once and calls ``model.predict`` on one image per
request (image bytes in the body, decoded with the training path so the work matches).

    python benchmarks/flask_baseline.py BUNDLE_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request


def create_app(bundle_dir: Path) -> Flask:
    import keras

    from clazzify.core.bundle import BundleMeta
    from clazzify.core.imaging import image_to_array

    meta = BundleMeta.load(bundle_dir)
    model = keras.models.load_model(bundle_dir / "model.keras", compile=False)
    app = Flask("flask-baseline")

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.post("/predict")
    def predict():
        pixels = image_to_array(request.get_data(), meta.image_size)
        probs = model.predict(pixels[np.newaxis], verbose=0)[0]
        k = int(probs.argmax())
        return jsonify(label=meta.class_names[k], probability=float(probs[k]),
                       probabilities=dict(zip(meta.class_names, probs.tolist(), strict=True)))

    return app


if __name__ == "__main__":
    create_app(Path(sys.argv[1])).run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
