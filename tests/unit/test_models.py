"""training/models.py: the architectures use keras.layers/keras.ops only, so they compile
whole and train under JAX; init_weights from a file round-trip into a new model.

One subprocess with ``KERAS_BACKEND=jax`` (the backend is fixed when keras is first
imported) checks, for each architecture, that the model with its augmentation block passes
Keras' ``model_supports_jit`` (so "Model doesn't support `jit_compile=True`" cannot come
back) and that an XLA-compiled training step runs (Keras did not turn ``jit_compile`` off).
These were two checks in two subprocesses (test_augment.py had the first, and the fast
tier spent a JAX start and an XLA compile of its own on ``compact``); one start of JAX and
one build per architecture serve both now, in the slow tier. Almost all of the time is XLA
compiling the training steps, so XLA generates code at its quickest, and two subprocesses
run at a time so both cores compile.

Every architecture is built and passes ``model_supports_jit``. The compiled training step
runs for the networks written here (alexnet, compact, efficientnet_lite0) and for one of
the three Keras applications (resnet50): what this project adds around an application (the
augmentation block, the uint8 input, the head) is the same code for all three, and
compiling the other two (efficientnet_b0 41 s, mobilenet_v2 24 s of CPU) tested Keras'
own networks again.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from clazzify.core.errors import ConfigError
from clazzify.training.models import ARCHITECTURES, ModelSpec, build_model
from tests.jax_env import jax_cpu_env

pytestmark = pytest.mark.unit

SCRIPT = """
import json, sys
import numpy as np
import keras
from keras.src.trainers.trainer import model_supports_jit
from clazzify.training.models import ModelSpec, build_model
assert keras.backend.backend() == "jax", keras.backend.backend()
augmented_step = sys.argv[1].split(",")  # the architectures whose step runs with augmentation
stepped = sys.argv[2].split(",")  # the architectures whose compiled training step runs
out = {}
for arch in sys.argv[3:]:
    augment = arch in augmented_step
    augmented = build_model(ModelSpec(arch, num_classes=3, image_size=32, augment=True))
    supports_jit = model_supports_jit(augmented)
    if arch not in stepped:
        out[arch] = [supports_jit, None]
        continue
    model = augmented if augment else build_model(ModelSpec(arch, num_classes=3, image_size=32, augment=False))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    loss = model.train_on_batch(x, np.array([0, 1, 2, 0]))
    out[arch] = [supports_jit and bool(model.jit_compile), float(np.asarray(loss).ravel()[0])]
print(json.dumps(out))
"""

# Two groups of about equal compile time (CPU seconds at XLA's default optimisation:
# efficientnet_lite0 25, resnet50 22, alexnet 7; the unstepped ones only build), so both
# cores compile; compact trains its step with the augmentation block (the same block every
# network has in front: proven once), the others without it.
GROUPS = (("efficientnet_lite0", "efficientnet_b0", "compact"), ("resnet50", "mobilenet_v2", "alexnet"))
STEPPED = ("alexnet", "compact", "efficientnet_lite0", "resnet50")
AUGMENTED_STEP = ("compact",)


def _start(architectures: tuple[str, ...]) -> subprocess.Popen:
    args = [sys.executable, "-c", SCRIPT, ",".join(AUGMENTED_STEP), ",".join(STEPPED), *architectures]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=jax_cpu_env())


def _results(proc: subprocess.Popen) -> dict[str, list]:
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_architecture_compiles_whole_and_trains_a_step_under_jax():
    """About half a minute on 2 cores (XLA compiling four training steps): the slow tier's."""
    pytest.importorskip("jax")
    assert sorted(sum(GROUPS, ())) == sorted(ARCHITECTURES), "a new architecture joins GROUPS"
    procs = [_start(group) for group in GROUPS]
    results = {}
    try:
        for proc in procs:
            results.update(_results(proc))
    finally:
        for proc in procs:  # a failed or timed-out group must not leave the other running
            proc.kill()
            proc.wait()
    assert set(results) == set(ARCHITECTURES)
    assert {a: jit for a, (jit, _) in results.items()} == dict.fromkeys(ARCHITECTURES, True), results
    losses = {a: v for a, (_, v) in results.items() if v is not None}
    assert set(losses) == set(STEPPED), results
    assert all(v == v and 0 < v < float("inf") for v in losses.values()), results  # finite, positive


# -- init_weights from a file: weights made in the test round-trip into a new model --------


def all_weights(model):
    return [np.asarray(w) for w in model.get_layer("core").get_weights()]


def test_clazzify_weights_round_trip(tmp_path):
    a = build_model(ModelSpec("compact", num_classes=4, image_size=32))
    path = tmp_path / "earlier.weights.h5"
    a.save_weights(path)
    b = build_model(ModelSpec("compact", num_classes=4, image_size=32, init_weights=str(path)))
    fresh = build_model(ModelSpec("compact", num_classes=4, image_size=32))
    for wa, wb in zip(all_weights(a), all_weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wf) for wa, wf in zip(all_weights(a), all_weights(fresh), strict=True))


@pytest.mark.slow  # builds MobileNetV2 twice
def test_backbone_weights_file_loads_into_the_backbone(tmp_path):
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    base.save_weights(path)
    model = build_model(ModelSpec("mobilenet_v2", num_classes=3, image_size=32, init_weights=str(path)))
    backbone = next(layer for layer in model.get_layer("core").layers if isinstance(layer, keras.Model))
    for w_base, w_loaded in zip(base.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(w_base, w_loaded)


def test_missing_or_wrong_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(ModelSpec("compact", 4, 32, init_weights=str(tmp_path / "nope.weights.h5")))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="cannot load init_weights"):
        build_model(ModelSpec("compact", 4, 32, init_weights=str(bad)))
