"""The bundle's engine table and its int8 model: one dispatcher, a measured int8 export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest

from clazzify.core.bundle import (
    ENGINE_CHOICES,
    ENGINES,
    INT8_FILE,
    ONNX_FILE,
    BundleMeta,
    auto_engines,
    load_predictor,
    serving_threads,
)
from clazzify.core.errors import ConfigError, DataError
from clazzify.serving.config import SERVER_ENGINES
from clazzify.training.data import split_files
from clazzify.training.export import Int8Check, quantize_bundle


def _test_images(hdf5_dir: Path) -> np.ndarray:
    with h5py.File(hdf5_dir / "test.h5", "r") as f:
        return f["images"][:]


def test_the_server_and_bundle_loading_share_one_engine_table():
    assert SERVER_ENGINES == ENGINE_CHOICES == ("auto", *ENGINES)
    assert {"onnx", "keras", "openvino", "openvino-bf16", "openvino-int8"} <= set(ENGINES)
    for name, spec in ENGINES.items():
        assert spec.name == name and spec.file


def test_an_unknown_engine_is_refused_with_the_choices(tiny_bundle: Path):
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'.*openvino-int8"):
        load_predictor(tiny_bundle, "tensorrt")


def test_serving_threads_are_one_per_core_the_process_may_use():
    import os

    assert serving_threads(2) == 2 and serving_threads(16) == 16
    assert serving_threads() == len(os.sched_getaffinity(0))


def test_the_bundle_carries_both_models_and_the_int8_comparison(tiny_bundle: Path, hdf5_dir: Path):
    assert (tiny_bundle / ONNX_FILE).is_file() and (tiny_bundle / INT8_FILE).is_file()
    assert (tiny_bundle / INT8_FILE).stat().st_size < (tiny_bundle / ONNX_FILE).stat().st_size
    check = BundleMeta.load(tiny_bundle).int8
    assert check["split"] == "val" and check["photos"] > 0 and check["input_exact"]
    assert set(check["per_class"]) == set(BundleMeta.load(tiny_bundle).class_names)
    images = _test_images(hdf5_dir)
    fp32 = load_predictor(tiny_bundle, "onnx").predict(images)
    int8 = load_predictor(tiny_bundle, "openvino-int8", threads=1, spinning=False).predict(images)
    assert int8.shape == fp32.shape
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, atol=1e-4)
    assert np.abs(int8 - fp32).max() < 0.2  # quantized, not a different model
    top2 = np.sort(fp32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.2
    assert (int8.argmax(1) == fp32.argmax(1))[clear].all()


def test_auto_serves_int8_only_when_its_check_passed(tiny_bundle: Path, tmp_path: Path):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    meta = json.loads((bundle / "clazzify.json").read_text())
    for passed, first in ((True, "openvino-int8"), (False, "onnx")):
        meta["int8"]["passed"] = passed
        (bundle / "clazzify.json").write_text(json.dumps(meta))
        assert auto_engines(bundle)[0] == first
        assert load_predictor(bundle, "auto").engine == first
    (bundle / INT8_FILE).unlink()
    meta["int8"]["passed"] = True
    (bundle / "clazzify.json").write_text(json.dumps(meta))
    assert load_predictor(bundle, "auto").engine == "onnx"  # no int8 file: float32
    with pytest.raises(DataError, match=INT8_FILE):
        load_predictor(bundle, "openvino-int8")


def test_quantization_keeps_the_input_exact(tiny_bundle: Path):
    graph = onnx.load(str(tiny_bundle / INT8_FILE)).graph
    image = graph.input[0].name
    assert [n.op_type for n in graph.node if image in n.input] != ["QuantizeLinear"]
    assert all(n.op_type != "QuantizeLinear" for n in graph.node if image in n.input)
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # but it is quantized
    # The first convolution and what follows the last one (pooling, classifier) stay float:
    # no dequantized weights feed them. The last convolution itself is int8.
    float_nodes = set(BundleMeta.load(tiny_bundle).int8["float_nodes"])
    convs = [n for n in graph.node if n.op_type == "Conv"]
    produced = {o: n for n in graph.node for o in n.output}

    def int8_weights(node) -> bool:
        weight = produced.get(node.input[1])
        return weight is not None and weight.op_type == "DequantizeLinear"

    assert convs[0].name in float_nodes and not int8_weights(convs[0])
    head = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert head and all(n.name in float_nodes and not int8_weights(n) for n in head)
    assert all(int8_weights(c) for c in convs[1:])  # the rest is int8, the last conv included


def test_a_failed_check_refits_the_temperature_and_leaves_float32_the_default(
    tiny_bundle: Path, hdf5_dir: Path, tmp_path: Path,
):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    train, val = split_files(hdf5_dir, "train"), split_files(hdf5_dir, "val")
    result = quantize_bundle(bundle, train, val, Int8Check(max_ece=1e-9, calibration_photos=8))
    assert result["passed"] is False
    assert result["temperature"] != 1.0 and result["calibration_photos"] == 8
    graph = onnx.load(str(bundle / INT8_FILE)).graph
    assert any(n.op_type == "Div" and n.name.endswith("_over_temperature_div") for n in graph.node)
    assert BundleMeta.load(bundle).int8 == json.loads(json.dumps(result))
    assert load_predictor(bundle, "auto").engine == "onnx"


@pytest.mark.parametrize("kwargs, message", [
    ({"min_agreement": 0.0}, "min_agreement"),
    ({"max_accuracy_drop": 1.5}, "max_accuracy_drop"),
    ({"max_ece": 0.0}, "max_ece"),
    ({"calibration_photos": 0}, "calibration_photos"),
])
def test_int8_check_settings_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Int8Check(**kwargs)


def test_the_gate_report_states_int8_against_float32_on_the_test_split(
    tiny_bundle: Path, hdf5_dir: Path, tmp_path: Path,
):
    from clazzify.training.evaluate import predict_split
    from clazzify.training.export import int8_report

    test = split_files(hdf5_dir, "test")
    fp32, labels = predict_split(load_predictor(tiny_bundle, "onnx"), test)
    comparison, markdown = int8_report(tiny_bundle, test, fp32, labels)
    assert comparison["test"]["photos"] == len(labels)
    assert comparison["test"]["fp32_accuracy"] == float((fp32.argmax(1) == labels).mean())
    assert comparison["validation"] == BundleMeta.load(tiny_bundle).int8
    for name in BundleMeta.load(tiny_bundle).class_names:
        assert f"| recall {name} |" in markdown
    assert "passed its check" in markdown or "FAILED its check" in markdown
    plain = Path(shutil.copytree(tiny_bundle, tmp_path / "no-int8"))
    (plain / INT8_FILE).unlink()
    assert int8_report(plain, test, fp32, labels) == ({}, "")
