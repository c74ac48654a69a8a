"""The model under test and the photos the tests make for it.

The model is ``--model-uri`` (a bundle folder or an MLflow URI) when given; by default the
session trains the DEFAULT recipe, read from the pipeline's own parameter defaults (frozen
EfficientNet-Lite0 with its packaged ImageNet weights, a logistic-regression head and a
fitted softmax temperature), on the synthetic demo set at the default image size.

Every prediction goes through the one decode path training and serving share
(``image_to_array`` of the encoded bytes, EXIF orientation included), then the bundle's
ONNX predictor, as the model server does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_tier import ModelUnderTest
from PIL import Image

#: Held-out photos per class the invariance tests use (drawn with seeds training never saw).
PHOTOS_PER_CLASS = 6


def default_recipe() -> dict:
    """The pipeline's default training parameters (what `run --local` trains)."""
    from pipelines.train import pipeline_parameters

    return {name: p.default for name, p in pipeline_parameters().items()}


def train_default_recipe(work: Path) -> Path:
    """The default recipe on the synthetic demo set; returns the bundle folder."""
    from clazzify.training.demo_data import write_demo_data
    from clazzify.training.ingest import IngestConfig, ingest_images
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5
    from clazzify.training.train import TrainConfig, train_model

    p = default_recipe()
    write_demo_data(work / "photos", per_class=30, size=96, seed=0, bad_files=False)
    ingest_images(str(work / "photos"), work / "manifest.csv", work / "ingest", IngestConfig(seed=p["seed"]),
                  progress=False)
    build_hdf5(work / "manifest.csv", work / "data", PreprocessConfig(image_size=p["image_size"], workers=1),
               progress=False)
    cfg = TrainConfig(architecture=p["architecture"], init_weights=p["init_weights"] or None,
                      frozen_backbone=p["frozen_backbone"], class_weighting=p["class_weighting"],
                      head_l2=p["head_l2"], epochs=p["epochs"], batch_size=p["batch_size"],
                      learning_rate=p["learning_rate"], patience=p["patience"])
    assert cfg.frozen_backbone and cfg.init_weights == "packaged", "the default recipe changed: update this tier"
    return train_model(work / "data", work / "model", cfg, verbose=0).bundle_dir


def resolve_bundle(uri: str, dest: Path) -> Path:
    """A bundle folder as given, or an MLflow model URI downloaded."""
    from clazzify.core.bundle import find_bundle

    if "://" not in uri or uri.startswith("file://"):
        return find_bundle(Path(uri.removeprefix("file://")))
    import mlflow

    return find_bundle(Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))))


@pytest.fixture(scope="session")
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelUnderTest:
    from clazzify.core.bundle import load_predictor

    uri = request.config.getoption("--model-uri")
    work = tmp_path_factory.mktemp("model-tier")
    bundle = resolve_bundle(uri, work) if uri else train_default_recipe(work)
    predictor = load_predictor(bundle)
    return ModelUnderTest(bundle, predictor, predictor.meta.image_size, list(predictor.meta.class_names))


@pytest.fixture(scope="session")
def photos(model: ModelUnderTest) -> list[tuple[str, Image.Image]]:
    """Held-out synthetic photos of the model's classes, landscape, camera-sized (320-400 px
    wide): (class, image). Seeds 1000+ are never used for training data."""
    from clazzify.training.demo_data import DRAWERS

    out = []
    for c, name in enumerate(model.class_names):
        if name not in DRAWERS:
            pytest.skip(f"the model's class {name!r} has no synthetic drawer: give photos of your own")
        rng = np.random.default_rng([1000, c])
        for _ in range(PHOTOS_PER_CLASS):
            w = int(rng.integers(320, 400))
            out.append((name, DRAWERS[name](rng, w, int(w * 0.75))))
    return out
