"""The clazzify training pipeline: ingest -> HDF5 -> train -> evaluate/gate -> register -> deploy.

    python -m pipelines.train compile -o train.yaml [--registry HOST/NS]
    python -m pipelines.train run --local --source DIR [--set key=value ...]
    python -m pipelines.train submit --host URL --experiment NAME [--set key=value ...]

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
import sys
from pathlib import Path
from typing import Any

import click
from kfp import compiler, dsl, kubernetes

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

# Requests and limits of the tasks whose size does not depend on the data set size
# beyond what one pod handles; train's are pipeline parameters.
SMALL = {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "2Gi"}
PREPROCESS = {"cpu_request": "2", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"}
EVALUATE = {"cpu_request": "2", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"}
# Secret keys -> environment variables (clazzify.core.storage reads these names).
S3_SECRET_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
S3_CONFIG_KEYS = {k: k for k in ("AWS_ENDPOINT_URL", "MINIO_SECURE")}
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
        size(outcome, **SMALL)
        steps = contextlib.ExitStack()
        steps.enter_context(dsl.ExitHandler(outcome, name="run"))
        if trigger:
            check = retrain_check(source=source, labels_from=labels_from, min_new_photos=min_new_photos,
                                  min_new_labels=min_new_labels, mlflow_tracking_uri=mlflow_tracking_uri,
                                  model_name=model_name)
            check.set_caching_options(False)  # new photos and labels arrive under the same parameters
            size(use_s3(check, s3_secret, s3_config), **SMALL)
            steps.enter_context(dsl.If(check.output == "retrain", name="enough-new-data"))
        ingest_task = ingest(
            source=source, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, min_side=min_side,
            shard_size=shard_size, labels_from=labels_from, relabel_csv=relabel_csv,
            mlflow_tracking_uri=mlflow_tracking_uri, model_name=model_name, image_size=image_size,
            pixel_cache=pixel_cache,
        )
        ingest_task.set_caching_options(False)  # a live source changes under the same parameters
        # Steps that talk to services (S3, MLflow, Kubernetes) retry with backoff: 30 s, 60 s, ...
        ingest_task.set_retry(**SERVICE_RETRY)
        size(use_s3(ingest_task, s3_secret, s3_config), **SMALL)
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
            seed=seed,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_experiment=mlflow_experiment,
            accelerator_type=accelerator_type,
            gpu_count=gpu_count,
            cpu=train_cpu,
            memory=train_memory,
        )
        size(use_s3(train_task, s3_secret, s3_config),
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
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_experiment=mlflow_experiment,
        )
        eval_task.set_caching_options(False)  # the champion it compares with can change
        size(eval_task, **EVALUATE)
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
            size(register_task, **SMALL)
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
            size(deploy_task, **SMALL)
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
    """``key=value`` strings -> typed pipeline arguments; unknown keys are an error."""
    params = pipeline_parameters()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        if key not in params:
            raise click.BadParameter(
                f"unknown parameter {key!r}; known: {', '.join(sorted(params))}", param_hint="--set"
            )
        kind = params[key].annotation
        kind = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}.get(kind, kind)
        try:
            if kind is bool:
                out[key] = raw.lower() in {"1", "true", "yes"}
            elif kind is dict:
                out[key] = json.loads(raw)
                if not isinstance(out[key], dict):
                    raise ValueError(raw)
            else:
                out[key] = kind(raw)
        except ValueError as e:
            raise click.BadParameter(f"{key}={raw!r} is not a valid {kind.__name__}", param_hint="--set") from e
    return out


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Compile, run locally, or submit the clazzify training pipeline."""


@cli.command("compile")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("train.yaml"),
              show_default=True, help="Where to write the KFP IR YAML.")
@click.option("--registry", default=None, metavar="HOST/NS", help=REGISTRY_HELP)
@parallelism_option
def compile_cmd(output: Path, registry: str | None, parallelism: int) -> None:
    """Compile the pipeline to KFP IR YAML (what `kfp run create -f` takes)."""
    compile_to(output, registry, parallelism)
    click.echo(f"wrote {output}")


def run_local(
    source: str, overrides: dict[str, Any], home: Path, parallelism: int = DEFAULT_PARALLELISM
) -> dict[str, Any]:
    """Run the pipeline with the KFP local SubprocessRunner; returns a summary."""
    from kfp import local

    from clazzify.core import storage
    from clazzify.registry.tracking import TrackingConfig, activate, default_tracking_uri
    from clazzify.registry.versions import champion_version

    if not storage.is_s3(source):
        source = str(Path(source).resolve())
    home = home.resolve()
    # One machine: ingest's pixels reach the preprocessing tasks without a copy.
    args = {"mlflow_tracking_uri": default_tracking_uri(home), "feature_cache": str(home / "features"),
            "pixel_cache": True, **overrides, "source": source}
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home / "kfp"),
        raise_on_error=True,
    )
    make_pipeline(parallelism)(**args)
    activate(TrackingConfig(args["mlflow_tracking_uri"], args.get("mlflow_experiment", "clazzify")))
    champion = champion_version(args.get("model_name", "clazzify"))
    return {
        "tracking_uri": args["mlflow_tracking_uri"],
        "pipeline_root": str(home / "kfp"),
        "champion_version": champion.version if champion else None,
        "champion_run_id": champion.run_id if champion else None,
    }


@cli.command("run")
@click.option("--local", "is_local", is_flag=True, required=True,
              help="Run with the KFP local runner (subprocesses in this environment).")
@click.option("--source", required=True, help="Class-folder root, s3:// prefix, or CSV/JSONL manifest.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a pipeline parameter (repeatable), e.g. --set epochs=3.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True,
              help=PRESET_HELP)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path(".clazzify"),
              show_default=True, help="Local state: MLflow store and KFP outputs.")
@parallelism_option
def run_cmd(is_local: bool, source: str, sets: tuple[str, ...], preset: str, home: Path, parallelism: int) -> None:
    """Run the whole pipeline locally and print where the champion is."""
    summary = run_local(source, parse_overrides(PRESETS[preset] + sets), home, parallelism)
    click.echo(json.dumps(summary, indent=2))


@cli.command("submit")
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
    """Submit the pipeline to a KFP API server and print the run URL (or create a recurring run)."""
    import tempfile

    import kfp

    args = parse_overrides(PRESETS[preset] + parse_params_file(params_file) + sets)
    if "source" not in args:
        raise click.UsageError("--set source=s3://bucket/prefix is required for a cluster run")
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
    click.echo(f"{host.rstrip('/')}/#/runs/details/{run.run_id}")


if __name__ == "__main__":
    sys.exit(cli())
