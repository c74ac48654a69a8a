"""The clazzify training pipeline: ingest -> HDF5 -> train -> evaluate/gate -> register -> deploy.

    python -m pipelines.train compile -o train.yaml [--registry HOST/NS]
    python -m pipelines.train run --local --source DIR [--set key=value ...]
    python -m pipelines.train submit --host URL --experiment NAME [--set key=value ...]

(or ``python pipelines/train.py ...``; ``kfp dsl compile --py pipelines/train.py`` reads it too).
Exit codes: 0 done (a local run: gate passed), 1 a step failed, 2 a bad input refused before
anything ran (one ``Error: ...`` line), 3 a local run whose gate failed (its reasons printed).

The pipeline function is a pure factory: every tunable is a typed parameter,
nothing reads the environment; the runners below supply the values.

On Kubernetes (kfp-kubernetes) every task has CPU/memory requests and limits, train
asks for `gpu_count` accelerators of `accelerator_type` and tolerates GPU taints, and
the tasks that read MinIO directly (ingest, preprocess, train for s3:// init weights)
get the credentials from the Secret `s3_secret` and the endpoint from the ConfigMap
`s3_config` as environment variables. MLflow steps need no S3 keys: the tracking
server proxies artifacts. The local runner ignores all of these settings.

Scale-out: ingest deals the accepted images into shards of at most ``shard_size``
(a pipeline parameter) and returns the shard numbers; preprocessing fans out over
them with ``dsl.ParallelFor``, each task writing its own HDF5 shard; train and
evaluate take every shard (``dsl.Collected``) and read them as one data set. KFP
fixes a ParallelFor's ``parallelism`` when the pipeline is compiled (it is an
``iteratorPolicy`` in the IR, not a run-time value), so it is an argument of the
factory :func:`make_pipeline` and a ``--parallelism`` option of each command.
"""

# No `from __future__ import annotations`: KFP reads the real annotation types.

import contextlib
import inspect
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click
from kfp import compiler, dsl, kubernetes

from clazzify.core.errors import describe
from clazzify.core.imaging import ImageLimits
from clazzify.training.models import DEFAULT_IMAGE_SIZE
from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.images import IMAGES, SERVING_IMAGE, retarget
from components.ingest.component import ingest
from components.preprocess.component import preprocess
from components.record_outcome.component import record_outcome
from components.register.component import register
from components.retrain_check.component import retrain_check
from components.train.component import train
from pipelines import console, params

# Requests and limits of the tasks whose size does not depend on the data set size
# beyond what one pod handles; train's are pipeline parameters.
SMALL = {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "2Gi"}
PREPROCESS = {"cpu_request": "2", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"}
EVALUATE = {"cpu_request": "2", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"}
# Secret keys -> environment variables (clazzify.core.storage reads these names).
S3_SECRET_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
S3_CONFIG_KEYS = {k: k for k in ("AWS_ENDPOINT_URL", "MINIO_SECURE")}
# The pipeline's MLflow login (MLflow runs its basic-auth app): Secret keys -> environment.
MLFLOW_SECRET_KEYS = {k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
# Retries of the steps that talk to services: 3 more attempts after 30 s, 60 s, 120 s.
SERVICE_RETRY = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0,
                 "backoff_max_duration": "300s"}


def size(task: dsl.PipelineTask, cpu_request, cpu_limit, memory_request, memory_limit):
    """Set a task's CPU/memory requests and limits (ignored by the local runner)."""
    return (
        task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
        .set_memory_request(memory_request).set_memory_limit(memory_limit)
    )


def use_s3(task: dsl.PipelineTask, secret: str, config: str) -> dsl.PipelineTask:
    """MinIO credentials (Secret) and endpoint (ConfigMap) as the task's environment."""
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=S3_SECRET_KEYS)
    kubernetes.use_config_map_as_env(
        task, config_map_name=config, config_map_key_to_env=S3_CONFIG_KEYS
    )
    return task


def use_mlflow_login(task: dsl.PipelineTask, secret: str) -> dsl.PipelineTask:
    """The pipeline's MLflow user (Secret ``secret``) as the task's environment: MLflow's
    client sends it on every request; without it the tracking server answers 401."""
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=MLFLOW_SECRET_KEYS)
    return task


#: Preprocessing tasks that run at once unless --parallelism says otherwise.
DEFAULT_PARALLELISM = 8


def make_pipeline(parallelism: int = DEFAULT_PARALLELISM, trigger: bool = False):
    """The pipeline with at most ``parallelism`` preprocessing shards at once (0 = no limit).

    With ``trigger`` (for recurring runs) a ``retrain-check`` step runs first and every other
    step sits inside ``dsl.If(check == 'retrain')``: a daily run trains only when at least
    ``min_new_photos`` photos or ``min_new_labels`` manual labels are new since the
    champion's data set. Like ``parallelism`` it is fixed when the pipeline is compiled.
    """
    if parallelism < 0:
        raise ValueError(f"parallelism must be >= 0 (0 = no limit), got {parallelism}")

    @dsl.pipeline(
        name="clazzify-train",
        description="Ingest photos, build HDF5 shards in parallel, train, gate against the champion, "
        "register in MLflow, deploy to KServe.",
    )
    def train_pipeline(
        source: str,
        mlflow_tracking_uri: str = "http://mlflow.clazzify.svc.cluster.local:5000",
        mlflow_experiment: str = "clazzify",
        model_name: str = "clazzify",
        # Defaults: EfficientNet-Lite0 with the ImageNet weights of a package dependency,
        # backbone frozen, a logistic-regression head on its features and a softmax
        # temperature fitted on val; recipe (input size, class weighting, head L2) chosen on
        # validation folds by benchmarks/accuracy.py, never on the test split. --preset
        # original gives the original system's AlexNet from scratch at 227 px.
        image_size: int = DEFAULT_IMAGE_SIZE,
        architecture: str = "efficientnet_lite0",
        epochs: int = 40,
        batch_size: int = 32,
        learning_rate: float = 0.002,
        patience: int = 15,
        init_weights: str = "packaged",
        label_smoothing: float = 0.1,
        class_weighting: str = "none",
        frozen_backbone: bool = True,
        head_l2: float = 10.0,
        # Folder caching backbone features by image pixels across runs ('' = none); the
        # local runner points it into --home.
        feature_cache: str = "",
        # Photos that are none of the classes (folder of category folders or a manifest, like
        # source): they train a "not a class" output; '' = the training-free score. Either way
        # the unknown threshold flags ood_false_flag_rate of the validation photos.
        ood_source: str = "",
        ood_false_flag_rate: float = 0.02,
        augment_copies: int = 0,
        # 500k photos a day = 50 shards; each preprocessing pod (PREPROCESS) turns one into
        # HDF5 in minutes. 0 = one shard.
        shard_size: int = 10_000,
        # Keep each photo's training pixels from ingest's validating decode, so preprocessing
        # copies them instead of decoding every photo again (one decode pass). KFP's launcher
        # copies a task's whole input artifact into its pod (kubeflow/pipelines#5672), so each
        # preprocessing pod would fetch every shard's pixels (S*S*3 bytes a photo): on a
        # cluster turn it on only for a run of one shard. The local runner turns it on.
        pixel_cache: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        min_side: int = ImageLimits.min_side,
        min_accuracy: float = 0.5,
        max_regression: float = 0.0,
        min_class_recall: float = 0.5,
        # No class may become the others' dumping ground (issue 15: 56% of the photos the
        # old default called ambiance were ambiance).
        min_class_precision: float = 0.8,
        # The share of ood_source photos the unknown rule must catch (cross-validated by
        # source in train); 0 = not required.
        min_ood_catch_rate: float = 0.0,
        seed: int = 42,
        # Moderators' labels win over folder/manifest labels: a scores database URL whose
        # manual_labels are read ('' = none) and/or a relabel CSV with corrected_label filled.
        labels_from: str = "",
        relabel_csv: str = "",
        # Recurring runs (compiled with trigger=True): train only when this much is new since the
        # champion's data set (0 = that condition off; both 0 = always).
        min_new_photos: int = 0,
        min_new_labels: int = 0,
        s3_secret: str = "clazzify-minio",
        s3_config: str = "clazzify-s3",
        mlflow_secret: str = "clazzify-mlflow",
        accelerator_type: str = "nvidia.com/gpu",
        gpu_count: int = 1,
        train_cpu: str = "4",
        train_memory: str = "16Gi",
        train_node_selector: dict = {},  # noqa: B006 (KFP reads the default; never mutated)
        artifacts_destination: str = "s3://mlflow",
        serving_image: str = SERVING_IMAGE,
        isvc_name: str = "clazzify",
        serving_namespace: str = "",
        deployment_mode: str = "Knative",
        canary_traffic_percent: int = 10,
        canary_soak_s: int = 300,
        canary_min_requests: int = 100,
        canary_max_error_rate: float = 0.01,
        canary_max_p99_ratio: float = 1.5,
        deploy_timeout_s: int = 900,
    ):
        # Every step runs inside an exit handler: a run that fails is recorded in MLflow with
        # the task and error KFP reports. With the trigger every step below also runs inside
        # the check's dsl.If (both entered here and closed at the end, so the steps read the
        # same either way).
        outcome = record_outcome(pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                 mlflow_tracking_uri=mlflow_tracking_uri,
                                 mlflow_experiment=mlflow_experiment)
        outcome.set_caching_options(False)
        size(use_mlflow_login(outcome, mlflow_secret), **SMALL)
        steps = contextlib.ExitStack()
        steps.enter_context(dsl.ExitHandler(outcome, name="run"))
        if trigger:
            check = retrain_check(source=source, labels_from=labels_from, min_new_photos=min_new_photos,
                                  min_new_labels=min_new_labels, mlflow_tracking_uri=mlflow_tracking_uri,
                                  model_name=model_name)
            check.set_caching_options(False)  # new photos and labels arrive under the same parameters
            size(use_mlflow_login(use_s3(check, s3_secret, s3_config), mlflow_secret), **SMALL)
            steps.enter_context(dsl.If(check.output == "retrain", name="enough-new-data"))
        ingest_task = ingest(
            source=source, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, min_side=min_side,
            shard_size=shard_size, labels_from=labels_from, relabel_csv=relabel_csv,
            mlflow_tracking_uri=mlflow_tracking_uri, model_name=model_name, image_size=image_size,
            pixel_cache=pixel_cache,
        )
        ingest_task.set_caching_options(False)  # a live source changes under the same parameters
        # No KFP retry: ingest's failures are the data's (a missing folder, an empty source), and a
        # retry only repeats them minutes later. Transient storage and MLflow failures are retried
        # inside the step, capped, by their clients (minio's urllib3 retries, MLflow's HTTP retries).
        size(use_mlflow_login(use_s3(ingest_task, s3_secret, s3_config), mlflow_secret), **SMALL)
        # ingest returns the shard numbers; one preprocessing task per shard.
        with dsl.ParallelFor(ingest_task.outputs["Output"], parallelism=parallelism, name="shards") as shard:
            hdf5_task = preprocess(
                manifest=ingest_task.outputs["manifest"],
                image_size=image_size,
                augment_copies=augment_copies,
                seed=seed,
                min_side=min_side,
                shard=shard,
                pixels=ingest_task.outputs["pixels"],
            )
            # Cached: the manifest artifact pins every input image.
            size(use_s3(hdf5_task, s3_secret, s3_config), **PREPROCESS)
        train_task = train(
            train_data=dsl.Collected(hdf5_task.outputs["train_data"]),
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            init_weights=init_weights,
            label_smoothing=label_smoothing,
            class_weighting=class_weighting,
            frozen_backbone=frozen_backbone,
            head_l2=head_l2,
            feature_cache=feature_cache,
            ood_source=ood_source,
            ood_false_flag_rate=ood_false_flag_rate,
            labels_from=labels_from,
            seed=seed,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_experiment=mlflow_experiment,
            accelerator_type=accelerator_type,
            gpu_count=gpu_count,
            cpu=train_cpu,
            memory=train_memory,
        )
        size(use_mlflow_login(use_s3(train_task, s3_secret, s3_config), mlflow_secret),
             train_cpu, train_cpu, train_memory, train_memory)
        train_task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpu_count)
        kubernetes.add_toleration(train_task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        kubernetes.add_node_selector_json(train_task, train_node_selector)
        eval_task = evaluate(
            model=train_task.outputs["model"],
            train_data=dsl.Collected(hdf5_task.outputs["train_data"]),
            manifest=ingest_task.outputs["manifest"],
            run_id=train_task.outputs["run_id"],
            model_name=model_name,
            min_accuracy=min_accuracy,
            max_regression=max_regression,
            min_class_recall=min_class_recall,
            min_class_precision=min_class_precision,
            min_ood_catch_rate=min_ood_catch_rate,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_experiment=mlflow_experiment,
        )
        eval_task.set_caching_options(False)  # the champion it compares with can change
        size(use_mlflow_login(eval_task, mlflow_secret), **EVALUATE)
        with dsl.If(eval_task.outputs["Output"] == "pass", name="gate-passed"):
            register_task = register(
                model=train_task.outputs["model"],
                evaluation=eval_task.outputs["evaluation"],
                run_id=train_task.outputs["run_id"],
                model_name=model_name,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                mlflow_tracking_uri=mlflow_tracking_uri,
                mlflow_experiment=mlflow_experiment,
            ).set_caching_options(False)
            register_task.set_retry(**SERVICE_RETRY)  # idempotent: one version per candidate
            size(use_mlflow_login(register_task, mlflow_secret), **SMALL)
            deploy_task = deploy(
                model_name=model_name,
                model_version=register_task.output,
                mlflow_tracking_uri=mlflow_tracking_uri,
                artifacts_destination=artifacts_destination,
                serving_image=serving_image,
                isvc_name=isvc_name,
                serving_namespace=serving_namespace,
                deployment_mode=deployment_mode,
                canary_traffic_percent=canary_traffic_percent,
                canary_soak_s=canary_soak_s,
                canary_min_requests=canary_min_requests,
                canary_max_error_rate=canary_max_error_rate,
                canary_max_p99_ratio=canary_max_p99_ratio,
                ready_timeout_s=deploy_timeout_s,
            ).set_caching_options(False)  # the cluster's state is not among its inputs
            # A rejected canary is final (the version is tagged canary_rejected and a retry
            # stops at once); retries cover API and readiness hiccups.
            deploy_task.set_retry(**SERVICE_RETRY)
            size(use_mlflow_login(deploy_task, mlflow_secret), **SMALL)
        steps.close()

    return train_pipeline


train_pipeline = make_pipeline()


def pipeline_parameters() -> dict[str, inspect.Parameter]:
    """The pipeline's parameters with their annotations and defaults."""
    return dict(inspect.signature(train_pipeline.pipeline_func).parameters)


#: Named parameter sets; the pipeline's own defaults are the measured winner on real
#: photos (benchmarks/README.md), ``original`` is the original system's AlexNet at 227 px.
PRESETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "original": ("architecture=alexnet", "image_size=227", "epochs=30", "learning_rate=0.001", "patience=10",
                 "init_weights=", "frozen_backbone=false", "class_weighting=balanced"),
    "fast": ("architecture=compact", "image_size=96", "epochs=60", "patience=0", "init_weights=",
             "frozen_backbone=false", "class_weighting=balanced"),
    # The previous default: MobileNetV2 from scratch at 128 px (0.914 on its test split).
    "scratch": ("architecture=mobilenet_v2", "image_size=128", "init_weights=", "frozen_backbone=false",
                "class_weighting=balanced"),
}
PRESET_HELP = "Start from a named parameter set (" + ", ".join(PRESETS) + "); --set wins over it."


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` strings -> typed pipeline arguments; unknown keys and mistyped values
    (``frozen_backbone=ture``, ``epochs=many``) are a :class:`click.BadParameter`."""
    return params.parse_overrides(pairs, pipeline_parameters())


def check_arguments(args: dict[str, Any]) -> None:
    """Refuse values the steps would refuse (``architecture=resnet``), before anything runs."""
    params.check_values(args, pipeline_parameters())


def parse_params_file(path: Path | None) -> tuple[str, ...]:
    """A YAML mapping of pipeline parameters as ``key=value`` strings (for parse_overrides)."""
    if path is None:
        return ()
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise click.BadParameter(f"cannot read {path}: {e}", "--params") from e
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} is not a mapping of parameter: value", param_hint="--params")
    return tuple(
        f"{key}={json.dumps(value) if isinstance(value, dict) else value}"
        for key, value in data.items()
    )


def retarget_spec(spec: Any, registry: str | None) -> Any:
    """``spec`` (compiled pipeline, as loaded YAML) with every clazzify image moved to
    ``registry``: executor images and parameter defaults such as ``serving_image``."""
    if not registry:
        return spec
    ours = set(IMAGES.values())
    if isinstance(spec, dict):
        return {k: retarget_spec(v, registry) for k, v in spec.items()}
    if isinstance(spec, list):
        return [retarget_spec(v, registry) for v in spec]
    if isinstance(spec, str) and spec in ours:
        return retarget(spec, registry)
    return spec


def compile_to(
    output: Path, registry: str | None, parallelism: int = DEFAULT_PARALLELISM, trigger: bool = False
) -> Path:
    """Compile the pipeline to ``output``, images moved to ``registry`` when given."""
    import yaml

    try:
        retarget(IMAGES["pipeline"], registry)  # a malformed registry fails before any work
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--registry") from e
    compiler.Compiler().compile(make_pipeline(parallelism, trigger), str(output))
    if registry:
        docs = [retarget_spec(d, registry) for d in yaml.safe_load_all(output.read_text())]
        output.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return output


PARALLELISM_HELP = (
    "Preprocessing shard tasks that run at once (0 = no limit); fixed at compile time by KFP. "
    "The local runner runs at most 2 at once whatever this says."
)
parallelism_option = click.option("--parallelism", type=click.IntRange(min=0), default=DEFAULT_PARALLELISM,
                                  show_default=True, help=PARALLELISM_HELP)
REGISTRY_HELP = (
    "Registry the images were pushed to (make push REGISTRY=...); default: components/images.py's."
)


#: Exit codes (docs/pipeline.md): a bad input refused before anything ran, a failed step,
#: a local run whose gate failed.
EXIT_BAD_INPUT = 2
EXIT_STEP_FAILED = 1
EXIT_GATE_FAILED = 3


class ParamsHelpCommand(click.Command):
    """A command whose help ends with every pipeline parameter, its type and default, grouped."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write("\n" + params.parameters_help(pipeline_parameters()) + "\n")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Stream every task's log; show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Compile, run locally, or submit the clazzify training pipeline."""
    ctx.obj = {"verbose": verbose}


@cli.command("compile")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("train.yaml"),
              show_default=True, help="Where to write the KFP IR YAML.")
@click.option("--registry", default=None, metavar="HOST/NS", help=REGISTRY_HELP)
@parallelism_option
def compile_cmd(output: Path, registry: str | None, parallelism: int) -> None:
    """Compile the pipeline to KFP IR YAML (what `kfp run create -f` takes)."""
    compile_to(output, registry, parallelism)
    click.echo(f"wrote {output}")


def _run_dirs(root: Path) -> set[Path]:
    return set(root.iterdir()) if root.is_dir() else set()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def run_local(
    source: str, overrides: dict[str, Any], home: Path, parallelism: int = DEFAULT_PARALLELISM, check: bool = True
) -> dict[str, Any]:
    """Run the pipeline with the KFP local SubprocessRunner; returns a summary: the gate's
    verdict and reasons, the test metrics, the champion and where everything is.

    The source and every value are checked first (:mod:`pipelines.params`): a bad one raises
    :class:`click.BadParameter` before any task starts (``check=False``: the caller did).
    """
    from kfp import local

    from clazzify.registry.tracking import TrackingConfig, activate, default_tracking_uri
    from clazzify.registry.versions import champion_version

    if check:
        params.check_source(source)
        check_arguments(overrides)
    source = params.source_path(source)
    home = home.resolve()
    # One machine: ingest's pixels reach the preprocessing tasks without a copy.
    args = {"mlflow_tracking_uri": default_tracking_uri(home), "feature_cache": str(home / "features"),
            "pixel_cache": True, **overrides, "source": source}
    if args.get("ood_source"):
        args["ood_source"] = params.source_path(args["ood_source"])
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home / "kfp"),
        raise_on_error=True,
    )
    before = _run_dirs(home / "kfp")
    make_pipeline(parallelism)(**args)
    run_dir = max(_run_dirs(home / "kfp") - before, key=lambda p: p.stat().st_mtime, default=None)
    model_name = args.get("model_name", "clazzify")
    activate(TrackingConfig(args["mlflow_tracking_uri"], args.get("mlflow_experiment", "clazzify")))
    champion = champion_version(model_name)
    evaluation = run_dir / "evaluate" / "evaluation" if run_dir else Path("/nonexistent")
    gate = _read_json(evaluation / "gate_report.json")
    metrics = _read_json(evaluation / "metrics.json")
    ood = _read_json(evaluation / "ood.json")
    trained = (_read_json(run_dir / "train" / "executor_output.json") or {}) if run_dir else {}
    run_id = trained.get("parameterValues", {}).get("run_id")
    return {
        "tracking_uri": args["mlflow_tracking_uri"],
        "pipeline_root": str(home / "kfp"),
        "run_dir": str(run_dir) if run_dir else None,
        "model_name": model_name,
        "verdict": gate["verdict"] if gate else None,
        "gate": {"passed": gate["passed"], "reasons": gate["reasons"]} if gate else None,
        "metrics": {k: metrics[k] for k in ("n", "accuracy", "accuracy_interval", "class_names", "recall",
                                            "recall_interval", "precision")} if metrics else None,
        "unknown": ood,
        "champion_version": champion.version if champion else None,
        "champion_run_id": champion.run_id if champion else None,
        "registered": bool(champion and run_id and champion.run_id == run_id),
    }


@cli.command("run", cls=ParamsHelpCommand)
@click.option("--local", "is_local", is_flag=True, required=True,
              help="Run with the KFP local runner (subprocesses in this environment).")
@click.option("--source", required=True, help="Class-folder root, s3:// prefix, or CSV/JSONL manifest.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a pipeline parameter (repeatable), e.g. --set epochs=3; the list is below.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True,
              help=PRESET_HELP)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path(".clazzify"),
              show_default=True, help="Local state: MLflow store, KFP outputs, logs/.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout (progress goes to stderr).")
@parallelism_option
@click.pass_context
def run_cmd(ctx: click.Context, is_local: bool, source: str, sets: tuple[str, ...], preset: str, home: Path,
            as_json: bool, parallelism: int) -> None:
    """Run the whole pipeline locally and end with the gate's verdict and the champion.

    Exit codes: 0 the gate passed, 1 a step failed, 2 a bad input (refused before anything
    ran), 3 the gate failed (its reasons are printed). The whole log, KFP's per-task output
    included, is written to HOME/logs/; the console gets one line per step.
    """
    overrides = parse_overrides(PRESETS[preset] + sets)
    params.check_source(source)
    check_arguments(overrides)
    log_path = home / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    progress = sys.stderr if as_json else sys.stdout
    with console.local_run_console(log_path, verbose=ctx.obj["verbose"], console=progress) as out:
        try:
            summary = run_local(source, overrides, home, parallelism, check=False)
        except RuntimeError as e:  # the local runner's "Pipeline ... finished with status FAILURE"
            task = out.failed_task or "?"
            reason = out.failure_reason(task) or str(e).splitlines()[0]
            raise StepFailed(f"step {task!r} failed: {reason} (full log: {log_path})") from e
    summary |= {"log": str(log_path), "home_arg": str(home)}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo("\n".join(console.verdict_lines(summary)))
    if summary["gate"] is not None and not summary["gate"]["passed"]:
        ctx.exit(EXIT_GATE_FAILED)


class StepFailed(click.ClickException):
    """A pipeline step failed (exit 1)."""

    exit_code = EXIT_STEP_FAILED


def check_kfp_host(host: str, timeout_s: float = 10.0) -> None:
    """The KFP API server at ``host`` answers HTTP (any status) within ``timeout_s``."""
    import httpx

    if not host.startswith(("http://", "https://")):
        raise click.BadParameter(f"{host!r} is not a URL: use e.g. http://localhost:8080", param_hint="--host")
    try:
        httpx.get(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=timeout_s)
    except httpx.HTTPError as e:
        raise click.ClickException(
            f"cannot reach the KFP API at {host} ({e.__class__.__name__}: {e}): check --host and that the "
            "server is up (e.g. kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80)") from e


@cli.command("submit", cls=ParamsHelpCommand)
@click.option("--host", required=True, help="KFP API server URL, e.g. http://localhost:8080.")
@click.option("--experiment", default="clazzify", show_default=True, help="KFP experiment name.")
@click.option("--namespace", default=None, help="Kubeflow namespace (multi-user installs).")
@click.option("--token", envvar="KFP_TOKEN", default=None, help="Existing bearer token (or KFP_TOKEN).")
@click.option("--run-name", default=None, help="Name of the run.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a pipeline parameter.")
@click.option("--params", "params_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="YAML file of parameters (e.g. manifests/overlays/production/"
              "pipeline-params.yaml); --set wins over it.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True,
              help=PRESET_HELP)
@click.option("--registry", default=None, metavar="HOST/NS", help=REGISTRY_HELP)
@parallelism_option
@click.option("--schedule", default=None, metavar="CRON",
              help="Create a KFP recurring run on this cron schedule (KFP's 6 fields, e.g. '0 0 3 * * *' "
              "daily at 03:00) instead of one run; it checks first and trains only when "
              "min_new_photos / min_new_labels (set them with --set) say so.")
def submit_cmd(host: str, experiment: str, namespace: str | None, token: str | None,
               run_name: str | None, sets: tuple[str, ...], params_file: Path | None,
               preset: str, registry: str | None, parallelism: int, schedule: str | None) -> None:
    """Submit the pipeline to a KFP API server and print the run URL (or create a recurring run).

    The parameters are checked first; an s3:// source is probed when AWS_ENDPOINT_URL (or
    MINIO_ENDPOINT) is set here. Exit code 2: a bad input or an unreachable host.
    """
    import tempfile

    import kfp

    args = parse_overrides(PRESETS[preset] + parse_params_file(params_file) + sets)
    if "source" not in args:
        raise click.UsageError("--set source=s3://bucket/prefix is required for a cluster run")
    from clazzify.core import storage

    if not storage.is_s3(args["source"]):
        raise click.BadParameter(f"source {args['source']!r} is not an s3://bucket/prefix: a cluster run cannot "
                                 "read this machine's folders; upload them and pass the prefix", param_hint="--set")
    params.check_source(args["source"], reach_s3=bool(os.environ.get("AWS_ENDPOINT_URL")
                                                      or os.environ.get("MINIO_ENDPOINT")))
    check_arguments(args)
    check_kfp_host(host)
    try:
        client = kfp.Client(host=host, namespace=namespace, existing_token=token)
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_to(Path(tmp) / "train.yaml", registry, parallelism, trigger=schedule is not None)
            if schedule:
                exp = client.create_experiment(experiment, namespace=namespace)
                job = client.create_recurring_run(
                    exp.experiment_id, run_name or "clazzify-daily", cron_expression=schedule, params=args,
                    pipeline_package_path=str(package), max_concurrency=1, no_catchup=True,
                )
                click.echo(f"recurring run {job.recurring_run_id} on '{schedule}'")
                return
            run = client.create_run_from_pipeline_package(
                str(package), arguments=args, experiment_name=experiment, run_name=run_name,
                namespace=namespace,
            )
    except click.ClickException:
        raise
    except Exception as e:  # the API's refusal (auth, namespace, a bad pipeline): say it in one line
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise click.ClickException(f"the KFP API at {host} refused the submission: {first}") from e
    click.echo(f"{host.rstrip('/')}/#/runs/details/{run.run_id}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a refused input or a failure ends in one ``Error: ...`` line
    (with ``-v`` after its traceback) and the documented exit code."""
    args = sys.argv[1:] if argv is None else argv
    verbose = bool({"-v", "--verbose"} & set(args[:1]))
    try:
        return cli.main(args, prog_name="pipelines.train", standalone_mode=False) or 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        return 130
    except click.ClickException as e:
        if verbose:
            traceback.print_exc()
        click.echo(f"Error: {e.format_message()}", err=True)
        return EXIT_STEP_FAILED if isinstance(e, StepFailed) else EXIT_BAD_INPUT
    except Exception as e:  # an unexpected failure: one line by default, the traceback with -v
        clean = describe(e)  # the shared contract: unreachable services, refused logins, ports...
        if clean is not None:
            if verbose:
                traceback.print_exc()
            click.echo(f"Error: {clean}", err=True)
            return EXIT_BAD_INPUT
        if verbose:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        click.echo(f"Error: {e.__class__.__name__}: {first}" + ("" if verbose else " (-v shows the traceback)"),
                   err=True)
        return EXIT_STEP_FAILED


if __name__ == "__main__":
    sys.exit(main())
