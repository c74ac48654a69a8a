"""The pipeline's parameters as a command line sees them: typed parsing of ``--set key=value``,
checks that refuse a bad value before anything runs, and the grouped list ``run --help`` shows.

Every check reads its rule from the package, not from a copy here: the step configurations
(``IngestConfig``, ``ModelSpec``, ``TrainConfig``, ``GateConfig``, ``InferenceServiceConfig``,
``CanaryPolicy``) validate themselves in ``__post_init__``, so a value they would refuse in the
middle of a run is refused here first.
"""

from __future__ import annotations

import difflib
import inspect
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

#: Parameters by concern, in the order ``run --help`` lists them. A test holds that every
#: pipeline parameter is in exactly one group.
PARAM_GROUPS: dict[str, tuple[str, ...]] = {
    "Data": ("source", "val_fraction", "test_fraction", "min_side", "seed", "shard_size", "pixel_cache",
             "labels_from", "relabel_csv", "augment_copies"),
    "Model and training": ("architecture", "image_size", "init_weights", "frozen_backbone", "head_l2",
                           "feature_cache", "epochs", "batch_size", "learning_rate", "patience",
                           "label_smoothing", "class_weighting"),
    "Unknown uploads (none of the classes)": ("ood_source", "ood_false_flag_rate"),
    "Gate": ("min_accuracy", "max_regression", "min_class_recall", "min_class_precision", "min_ood_catch_rate"),
    "Tracking and registry": ("mlflow_tracking_uri", "mlflow_experiment", "model_name"),
    "Recurring runs (compiled with --schedule)": ("min_new_photos", "min_new_labels"),
    "Cluster resources": ("s3_secret", "s3_config", "mlflow_secret", "accelerator_type", "gpu_count", "train_cpu",
                          "train_memory", "train_node_selector", "artifacts_destination"),
    "Deploy (KServe canary)": ("serving_image", "isvc_name", "serving_namespace", "deployment_mode",
                               "canary_traffic_percent", "canary_soak_s", "canary_min_requests",
                               "canary_max_error_rate", "canary_max_p99_ratio", "deploy_timeout_s"),
}

TRUE = frozenset({"true", "1", "yes"})
FALSE = frozenset({"false", "0", "no"})
TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}
#: How long the check of an s3:// source may wait for the endpoint.
SOURCE_CHECK_TIMEOUT_S = 10.0
#: Manifest files ``--source`` may name instead of a class-folder root.
MANIFEST_SUFFIXES = (".csv", ".jsonl")


def kind_of(param: inspect.Parameter) -> type:
    """The Python type of a pipeline parameter (annotations may be strings or types)."""
    return TYPES.get(param.annotation, param.annotation)


def parse_value(key: str, raw: str, kind: type) -> Any:
    """``raw`` as a ``kind``; booleans only from true/false/1/0/yes/no (any case).

    Raises:
        click.BadParameter: naming the key, the value and what is accepted.
    """
    if kind is bool:
        word = raw.strip().lower()
        if word in TRUE | FALSE:
            return word in TRUE
        raise click.BadParameter(f"{key}={raw!r} is not a boolean: use true/false (or 1/0, yes/no)",
                                 param_hint="--set")
    try:
        if kind is dict:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError(raw)
            return value
        return kind(raw)
    except ValueError as e:
        example = {int: "an integer such as 3", float: "a number such as 0.5", dict: 'a JSON object such as {"k": "v"}'}
        raise click.BadParameter(f"{key}={raw!r} is not {example.get(kind, 'a ' + kind.__name__)}",
                                 param_hint="--set") from e


def parse_overrides(pairs: tuple[str, ...], params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """``key=value`` strings -> typed pipeline arguments; unknown keys and bad values are an error."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise click.BadParameter(f"unknown parameter {key!r}; {hint}`run --help` lists them", param_hint="--set")
        out[key] = parse_value(key, raw, kind_of(params[key]))
    return out


def check_values(args: Mapping[str, Any], params: Mapping[str, inspect.Parameter]) -> None:
    """Refuse a parameter set the steps would refuse, before the pipeline starts.

    ``args`` are the overrides; the pipeline's defaults fill the rest. Each step's own
    configuration class decides (enums such as ``architecture``, ``class_weighting`` and
    ``deployment_mode``; ranges; combinations such as a frozen backbone without weights).

    Raises:
        click.BadParameter: the configuration's message, which names the value and the fix.
    """
    from clazzify.core.errors import ConfigError
    from clazzify.core.imaging import ImageLimits
    from clazzify.rollout.canary import CanaryPolicy
    from clazzify.rollout.isvc import InferenceServiceConfig
    from clazzify.training.gate import GateConfig
    from clazzify.training.ingest import IngestConfig
    from clazzify.training.models import ModelSpec
    from clazzify.training.train import TrainConfig

    p = {k: v.default for k, v in params.items() if v.default is not inspect.Parameter.empty} | dict(args)
    checks = (
        lambda: IngestConfig(val_fraction=p["val_fraction"], test_fraction=p["test_fraction"], seed=p["seed"],
                             limits=ImageLimits(min_side=p["min_side"]), shard_size=p["shard_size"]),
        lambda: ModelSpec(p["architecture"], image_size=p["image_size"], init_weights=p["init_weights"] or None),
        lambda: TrainConfig(architecture=p["architecture"], epochs=p["epochs"], batch_size=p["batch_size"],
                            learning_rate=p["learning_rate"], init_weights=p["init_weights"] or None,
                            patience=p["patience"], label_smoothing=p["label_smoothing"], seed=p["seed"],
                            class_weighting=p["class_weighting"], frozen_backbone=p["frozen_backbone"],
                            head_l2=p["head_l2"], feature_cache=p["feature_cache"],
                            ood_source=p["ood_source"], ood_false_flag_rate=p["ood_false_flag_rate"]),
        lambda: GateConfig(min_accuracy=p["min_accuracy"], max_regression=p["max_regression"],
                           min_class_recall=p["min_class_recall"], min_class_precision=p["min_class_precision"],
                           min_ood_catch_rate=p["min_ood_catch_rate"]),
        lambda: InferenceServiceConfig(image=p["serving_image"], name=p["isvc_name"],
                                       namespace=p["serving_namespace"] or "clazzify", model_name=p["model_name"],
                                       deployment_mode=p["deployment_mode"]),
        lambda: CanaryPolicy(soak_s=p["canary_soak_s"], min_requests=p["canary_min_requests"],
                             max_error_rate=p["canary_max_error_rate"], max_p99_ratio=p["canary_max_p99_ratio"]),
    )
    for check in checks:
        try:
            check()
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--set") from e
    if p["ood_source"]:
        check_source(p["ood_source"], reach_s3=False, name="ood_source")
    if not 0 <= p["canary_traffic_percent"] <= 100:
        raise click.BadParameter(f"canary_traffic_percent={p['canary_traffic_percent']} is outside 0-100",
                                 param_hint="--set")
    for name in ("min_new_photos", "min_new_labels", "augment_copies", "gpu_count", "deploy_timeout_s"):
        if p[name] < 0:
            raise click.BadParameter(f"{name}={p[name]} must be >= 0", param_hint="--set")


def check_source(source: str, *, reach_s3: bool = True, timeout_s: float = SOURCE_CHECK_TIMEOUT_S,
                 name: str = "source") -> None:
    """``source`` exists (a class-folder root or a CSV/JSONL manifest) or is an ``s3://`` prefix
    whose endpoint, credentials and bucket answer within ``timeout_s``.

    Raises:
        click.BadParameter: naming the source and the fix.
    """
    from clazzify.core import storage
    from clazzify.core.errors import StorageError

    if storage.is_s3(source):
        if not reach_s3:
            return
        failure: list[BaseException] = []

        def probe() -> None:
            try:
                storage.preflight(source)
            except (StorageError, ValueError) as e:
                failure.append(e)

        # minio's client retries for minutes on a dead endpoint: wait a bounded time on a thread
        # that cannot hold the process open.
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise click.BadParameter(
                f"{source}: no answer from the S3 endpoint within {timeout_s:.0f} s: check AWS_ENDPOINT_URL "
                "and that the server is up", param_hint="--source")
        if failure:
            raise click.BadParameter(f"{source}: {failure[0]}", param_hint="--source")
        return
    hint_param = "--source" if name == "source" else "--set"
    path = storage.local_path(source)
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        near = difflib.get_close_matches(path.name, [c.name for c in parent.iterdir()], n=1) if parent else []
        hint = f" (did you mean {str(parent / near[0])!r}?)" if near else ""
        raise click.BadParameter(
            f"{name} {str(path)!r} does not exist{hint}: give a folder with one sub-folder per class, a CSV/JSONL "
            "manifest or an s3://bucket/prefix", param_hint=hint_param)
    if path.is_file() and path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise click.BadParameter(
            f"{name} {str(path)!r} is a file but not a manifest ({'/'.join(MANIFEST_SUFFIXES)}): give its folder "
            "or a manifest", param_hint=hint_param)


def format_default(value: Any) -> str:
    if value == "":
        return "''"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def parameters_help(params: Mapping[str, inspect.Parameter]) -> str:
    """Every parameter with its type and default, grouped by concern (``run --help``'s epilog)."""
    lines = ["Pipeline parameters (--set KEY=VALUE; booleans: true/false). `run --local` points",
             "mlflow_tracking_uri and feature_cache into --home and turns pixel_cache on."]
    for group, names in PARAM_GROUPS.items():
        lines.append(f"\n  {group}:")
        for name in names:
            param = params[name]
            default = "required" if param.default is inspect.Parameter.empty else format_default(param.default)
            lines.append(f"    {name:<24} {kind_of(param).__name__:<6} {default}")
    return "\n".join(lines)


def source_path(source: str) -> str:
    """A local source as an absolute path (the local runner's tasks start in other folders)."""
    from clazzify.core import storage

    return source if storage.is_s3(source) else str(Path(source).resolve())
