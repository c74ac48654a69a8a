"""Shared fixtures: tiny synthetic data and a tiny trained model, made by the tests.

Nothing here touches the network or ../shared. The tiny model is trained once
per session (32 px, 2 epochs, the `compact` network) and reused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--model-uri", default=None, metavar="BUNDLE_OR_URI",
        help="tests/model: the model to test, a bundle folder or an MLflow URI (models:/NAME@ALIAS, "
        "runs:/...; MLFLOW_TRACKING_URI names the store). Default: train the default recipe on "
        "synthetic photos in the session.",
    )


@contextmanager
def _mlflow_uris_restored() -> Iterator[None]:
    """``mlflow.set_tracking_uri``/``set_registry_uri`` also export ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI`` (for child processes), and ``default_tracking_uri`` prefers them to
    ``--home``: a test that activates its store must not hand it to the next test's commands,
    nor leave MLflow's own process-wide URIs pointing at it."""
    import sys

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    uris = None
    if "mlflow" in sys.modules:
        import mlflow.tracking._model_registry.utils as registry
        import mlflow.tracking._tracking_service.utils as tracking

        uris = (tracking._tracking_uri, registry._registry_uri)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(uris[0] if uris else None)
        mlflow.set_registry_uri(uris[1] if uris else None)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_in_their_test():
    with _mlflow_uris_restored():
        yield


@pytest.fixture(autouse=True, scope="module")
def _mlflow_uris_stay_in_their_module():
    """A module's own fixtures may activate a store for all its tests (the autouse fixture of
    each test then keeps it): it goes when the module ends, so the next file a worker runs
    never reads it (a registry test's champion once reached the retrain test that way)."""
    with _mlflow_uris_restored():
        yield


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 4-class set: 24 images per class, plus 4 bad files."""
    from clazzify.training.demo_data import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root, per_class=24, size=64, seed=1, bad_files=True)
    return root


@pytest.fixture(scope="session")
def hdf5_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val/test HDF5 files at 32 px built from :func:`demo_dir`."""
    from clazzify.training.ingest import IngestConfig, ingest_images
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5

    work = tmp_path_factory.mktemp("hdf5")
    ingest_images(str(demo_dir), work / "manifest.csv", work / "report", IngestConfig(seed=3), progress=False)
    build_hdf5(work / "manifest.csv", work / "data", PreprocessConfig(image_size=32, workers=1), progress=False)
    return work / "data"


@pytest.fixture(scope="session")
def tiny_run(hdf5_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One training run, 2 epochs at 32 px: ``(out_dir, TrainResult)``. The tests that check
    what a run leaves (history, curve, bundle) and those that use its model share it."""
    from clazzify.training.train import TrainConfig, train_model

    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(architecture="compact", epochs=2, batch_size=16, learning_rate=3e-3, patience=0)
    return out, train_model(hdf5_dir, out, cfg, verbose=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run) -> Path:
    """The model bundle (.keras + ONNX + clazzify.json) of :func:`tiny_run`."""
    return tiny_run[1].bundle_dir


@pytest.fixture(scope="session")
def ood_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen EfficientNet-Lite0 trained at 64 px on :func:`demo_dir` with an ``ood_source``
    of 96 drawn graphics, 16 of each of ``SYNTHETIC_KINDS`` (a folder, so a source group, per
    kind). Made once per test run (``once_per_run``): the unit test of the exported rejection
    output and the server's ``unknown`` answers read the same model. Holds ``data/`` (the
    HDF5 splits) and ``out/bundle``."""
    from tests.once import once_per_run

    def build(work: Path) -> None:
        from PIL import Image

        from clazzify.training.ingest import IngestConfig, ingest_images
        from clazzify.training.ood import SYNTHETIC_KINDS, synthetic_outliers
        from clazzify.training.preprocess import PreprocessConfig, build_hdf5
        from clazzify.training.train import TrainConfig, train_model

        ingest_images(str(demo_dir), work / "manifest.csv", work / "report", IngestConfig(seed=3), progress=False)
        build_hdf5(work / "manifest.csv", work / "data", PreprocessConfig(image_size=64, workers=1), progress=False)
        for i, image in enumerate(synthetic_outliers(96, 64, seed=11)):
            folder = work / "ood" / SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")
        cfg = TrainConfig(architecture="efficientnet_lite0", init_weights="packaged", frozen_backbone=True,
                          class_weighting="none", head_l2=10.0, ood_source=str(work / "ood"))
        train_model(work / "data", work / "out", cfg, verbose=0)

    return once_per_run(tmp_path_factory, "ood-run", build)


@pytest.fixture(scope="session")
def ood_bundle(ood_run: Path) -> Path:
    """The bundle of :func:`ood_run`."""
    return ood_run / "out" / "bundle"


# The files that take longest (pytest --durations, summed per file), longest first. `make
# test` hands whole files to its pytest-xdist workers in collection order (--dist loadfile),
# so these start first and no worker is left running a long file alone at the end.
LONGEST_FIRST = (
    "docs/test_docs_pages.py", "components/test_pipeline.py", "integration/test_worker_e2e.py",
    "integration/test_review_ui.py", "unit/test_models.py", "unit/test_train.py",
    "components/test_daily_loop.py", "components/test_retrain.py", "integration/test_mlflow_model.py",
    "integration/test_mlflow_auth.py", "integration/test_serving_http.py", "model/test_default_recipe.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    rank = {tests / name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: the rest keep their order
