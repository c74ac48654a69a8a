"""The clazzify training pipeline: ingest -> HDF5 -> train -> evaluate/gate -> register.

    python pipelines/train.py compile -o train.yaml
    python pipelines/train.py run --local --source DIR [--set key=value ...]
    python pipelines/train.py submit --host URL --experiment NAME [--set key=value ...]

The pipeline function is a pure factory: every tunable is a typed parameter,
nothing reads the environment; the runners below supply the values.
"""

# No `from __future__ import annotations`: KFP reads the real annotation types.

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import click
from kfp import compiler, dsl

from components.evaluate.component import evaluate
from components.ingest.component import ingest
from components.preprocess.component import preprocess
from components.register.component import register
from components.train.component import train


@dsl.pipeline(
    name="clazzify-train",
    description="Ingest photos, build HDF5, train, gate against the champion, register in MLflow.",
)
def train_pipeline(
    source: str,
    mlflow_tracking_uri: str = "http://mlflow.clazzify.svc.cluster.local:5000",
    mlflow_experiment: str = "clazzify",
    model_name: str = "clazzify",
    image_size: int = 227,
    architecture: str = "alexnet",
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 0.001,
    patience: int = 5,
    init_weights: str = "",
    augment_copies: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    min_side: int = 32,
    min_accuracy: float = 0.5,
    max_regression: float = 0.0,
    min_class_recall: float = 0.0,
    seed: int = 42,
):
    ingest_task = ingest(
        source=source, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, min_side=min_side
    )
    ingest_task.set_caching_options(False)  # a live source changes under the same parameters
    hdf5_task = preprocess(
        manifest=ingest_task.outputs["manifest"],
        image_size=image_size,
        augment_copies=augment_copies,
        seed=seed,
        min_side=min_side,
    )
    train_task = train(
        train_data=hdf5_task.outputs["train_data"],
        architecture=architecture,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        init_weights=init_weights,
        seed=seed,
        mlflow_tracking_uri=mlflow_tracking_uri,
        mlflow_experiment=mlflow_experiment,
    )
    eval_task = evaluate(
        model=train_task.outputs["model"],
        train_data=hdf5_task.outputs["train_data"],
        run_id=train_task.outputs["run_id"],
        model_name=model_name,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        min_class_recall=min_class_recall,
        mlflow_tracking_uri=mlflow_tracking_uri,
        mlflow_experiment=mlflow_experiment,
    )
    eval_task.set_caching_options(False)  # the champion it compares with can change
    with dsl.If(eval_task.outputs["Output"] == "pass", name="gate-passed"):
        register(
            model=train_task.outputs["model"],
            evaluation=eval_task.outputs["evaluation"],
            run_id=train_task.outputs["run_id"],
            model_name=model_name,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_experiment=mlflow_experiment,
        ).set_caching_options(False)


def pipeline_parameters() -> dict[str, inspect.Parameter]:
    """The pipeline's parameters with their annotations and defaults."""
    return dict(inspect.signature(train_pipeline.pipeline_func).parameters)


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
        kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
        try:
            out[key] = kind(raw) if kind is not bool else raw.lower() in {"1", "true", "yes"}
        except ValueError as e:
            raise click.BadParameter(f"{key}={raw!r} is not a valid {kind.__name__}", param_hint="--set") from e
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Compile, run locally, or submit the clazzify training pipeline."""


@cli.command("compile")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("train.yaml"),
              show_default=True, help="Where to write the KFP IR YAML.")
def compile_cmd(output: Path) -> None:
    """Compile the pipeline to KFP IR YAML (what `kfp run create -f` takes)."""
    compiler.Compiler().compile(train_pipeline, str(output))
    click.echo(f"wrote {output}")


def run_local(source: str, overrides: dict[str, Any], home: Path) -> dict[str, Any]:
    """Run the pipeline with the KFP local SubprocessRunner; returns a summary."""
    from kfp import local

    from clazzify import storage
    from clazzify.registry import champion_version
    from clazzify.tracking import TrackingConfig, activate, default_tracking_uri

    if not storage.is_s3(source):
        source = str(Path(source).resolve())
    home = home.resolve()
    args = {"mlflow_tracking_uri": default_tracking_uri(home), **overrides, "source": source}
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home / "kfp"),
        raise_on_error=True,
    )
    train_pipeline(**args)
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
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path(".clazzify"),
              show_default=True, help="Local state: MLflow store and KFP outputs.")
def run_cmd(is_local: bool, source: str, sets: tuple[str, ...], home: Path) -> None:
    """Run the whole pipeline locally and print where the champion is."""
    summary = run_local(source, parse_overrides(sets), home)
    click.echo(json.dumps(summary, indent=2))


@cli.command("submit")
@click.option("--host", required=True, help="KFP API server URL, e.g. http://localhost:8080.")
@click.option("--experiment", default="clazzify", show_default=True, help="KFP experiment name.")
@click.option("--namespace", default=None, help="Kubeflow namespace (multi-user installs).")
@click.option("--token", envvar="KFP_TOKEN", default=None, help="Existing bearer token (or KFP_TOKEN).")
@click.option("--run-name", default=None, help="Name of the run.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a pipeline parameter.")
def submit_cmd(host: str, experiment: str, namespace: str | None, token: str | None,
               run_name: str | None, sets: tuple[str, ...]) -> None:
    """Submit the pipeline to a KFP API server and print the run URL."""
    import kfp

    args = parse_overrides(sets)
    if "source" not in args:
        raise click.UsageError("--set source=s3://bucket/prefix is required for a cluster run")
    client = kfp.Client(host=host, namespace=namespace, existing_token=token)
    run = client.create_run_from_pipeline_func(
        train_pipeline, arguments=args, experiment_name=experiment, run_name=run_name, namespace=namespace
    )
    click.echo(f"{host.rstrip('/')}/#/runs/details/{run.run_id}")


if __name__ == "__main__":
    sys.exit(cli())
