"""The model server's command line: ``python -m clazzify.serving``, ``python -m serving`` and
``clazzify serve`` all run :func:`main`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import click

from clazzify.core.errors import ClazzifyError
from clazzify.core.imaging import ImageLimits
from clazzify.serving.auth import load_api_keys
from clazzify.serving.config import SERVER_ENGINES, ServerConfig, ServingLimits, parse_model_uri

KEYS_ENV = "CLAZZIFY_API_KEYS"
VERSION_ENV = "CLAZZIFY_MODEL_VERSION"
log = logging.getLogger("serving")


def kserve_options(extra: list[str]) -> argparse.Namespace:
    """Parse the arguments clazzify has no option of with ``kserve.model_server.parser``
    (``--max_threads``, ``--enable_grpc``, ``--enable_docs_url``, ``--timeout-keep-alive``,
    ...), so a standard ServingRuntime args template works.

    Raises:
        click.UsageError: an argument neither clazzify nor KServe knows, or a bad value.
    """
    from kserve.model_server import parser as kserve_parser

    strict = argparse.ArgumentParser(parents=[kserve_parser], add_help=False,
                                     allow_abbrev=False, exit_on_error=False)
    try:
        ns, unknown = strict.parse_known_args(extra)
    except argparse.ArgumentError as e:
        raise click.UsageError(f"{e}: see --help and KServe's ModelServer arguments") from e
    if unknown:
        raise click.UsageError(
            f"unknown arguments {' '.join(unknown)}: see --help (clazzify's options, each with "
            "KServe's underscore spelling where KServe has one) and kserve.model_server's parser"
        )
    return ns


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                                 "ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
@click.option("--model-uri", envvar="CLAZZIFY_MODEL_URI", default="models:/clazzify@champion",
              help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, "
                   "s3://bucket/prefix or a local folder (/mnt/models under KServe).")
@click.option("--model-name", "--model_name", default="clazzify",
              help="Name in the URLs: /v1/models/NAME:predict.")
@click.option("--model-version", envvar=VERSION_ENV, default=None,
              help="Version to report (the InferenceService sets it to the registry version); "
                   "default: the registry version (of a models:/ URI, or stamped into the "
                   "bundle's clazzify.json at registration), else a hash of the model file.")
@click.option("--engine", type=click.Choice(SERVER_ENGINES), default="auto",
              help="auto = ONNX Runtime on the int8 model if the export's int8 check passed, "
                   "else on float32 (onnx), else Keras; openvino[-bf16|-int8] = OpenVINO on the "
                   "ONNX export (pip install 'clazzify[openvino]'; check accuracy before bf16).")
@click.option("--http-port", "--http_port", default=8080,
              help="HTTP port (listens on all interfaces).")
@click.option("--grpc-port", "--grpc_port", default=8081,
              help="V2 gRPC port (same keys and limits as HTTP); --enable_grpc false turns it off.")
@click.option("--workers", default=1, type=click.IntRange(1, 1),
              help="Server processes: 1 (the model and its batcher live in the process; add "
                   "replicas to scale out). Accepted because KServe's ModelServer has it.")
@click.option("--max-batch-size", default=4,
              help="Most images per engine call. On CPU, ONNX Runtime peaks at small batches "
                   "(benchmarks/model_server.py prints the engine's rate per batch size).")
@click.option("--max-latency-ms", default=5.0,
              help="Longest a request waits for concurrent ones to share its batch.")
@click.option("--watch-alias", is_flag=True,
              help="Re-resolve the models:/NAME@ALIAS URI every --watch-interval seconds and "
                   "swap in a new version without failing requests.")
@click.option("--watch-interval", default=30.0, help="Seconds between alias checks.")
@click.option("--api-keys-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help=f"Accepted bearer keys, one per line (merged with ${KEYS_ENV}).")
@click.option("--insecure", is_flag=True,
              help="Allow starting with no API key (no authentication).")
@click.option("--max-body-mb", default=10.0, help="Largest request body, in MB (413 above).")
@click.option("--max-images", default=64, help="Most images per request.")
@click.option("--max-pixels", default=ImageLimits.max_pixels,
              help="Largest width*height per image (as ingest).")
@click.option("--min-side", default=ImageLimits.min_side,
              help="Smallest accepted image side (as ingest).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI for models:/ and runs:/ URIs "
                   "(default: the local store under .clazzify/).")
def main(ctx: click.Context, model_uri: str, model_name: str, model_version: str | None,
         engine: str, http_port: int, grpc_port: int, workers: int, max_batch_size: int,
         max_latency_ms: float, watch_alias: bool, watch_interval: float,
         api_keys_file: Path | None, insecure: bool, max_body_mb: float, max_images: int,
         max_pixels: int, min_side: int, tracking_uri: str | None) -> None:
    """Serve a clazzify model over KServe's V1 and V2 (Open Inference) REST and V2 gRPC.

    \b
    POST /v1/models/NAME:predict  {"instances": [{"b64": "<jpeg/png/webp bytes>"}]}
    POST /v2/models/NAME/infer    one BYTES input: base64 strings in JSON, or raw bytes
                                  with the binary extension
    GET  /v2/health/ready, /v2/health/live, /v1/models/NAME, /metrics  (no key needed)
    gRPC inference.GRPCInferenceService on --grpc-port (ServerLive/ServerReady/ModelReady
         need no key)

    Every other call needs 'Authorization: Bearer <key>' (gRPC: the same metadata), with
    keys from --api-keys-file and/or $CLAZZIFY_API_KEYS.

    KServe's ModelServer arguments (--model_name, --http_port, --grpc_port, --workers,
    --max_threads, --enable_grpc, --enable_docs_url, ...) are accepted as well.
    """
    try:
        cfg = ServerConfig(
            model_uri=model_uri, model_name=model_name, engine=engine, http_port=http_port,
            max_batch_size=max_batch_size, max_latency_ms=max_latency_ms,
            watch_interval_s=watch_interval if watch_alias else 0.0,
            limits=ServingLimits(max_body_bytes=int(max_body_mb * 1024 * 1024),
                                 max_images=max_images,
                                 image_limits=ImageLimits(min_side=min_side, max_pixels=max_pixels)),
        )
        file_text = api_keys_file.read_text() if api_keys_file else None
        keys = load_api_keys(file_text, os.environ.get(KEYS_ENV))
    except (ClazzifyError, OSError) as e:
        raise click.UsageError(str(e)) from e
    if model_version and cfg.watch_interval_s:
        raise click.UsageError(f"--model-version (or ${VERSION_ENV}) and --watch-alias exclude "
                               "each other: a watched alias reports the registry's version")
    if not keys and not insecure:
        raise click.UsageError(
            f"no API key configured: put keys in --api-keys-file or ${KEYS_ENV}, or pass "
            "--insecure to serve without authentication"
        )
    kserve_args = kserve_options(ctx.args)
    if parse_model_uri(cfg.model_uri).from_registry:
        import mlflow

        from clazzify.registry.tracking import default_tracking_uri

        uri = tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

    from kserve import ModelServer
    from kserve.model_server import app

    from clazzify.serving.grpc_server import GuardedGRPCServer
    from clazzify.serving.http import GuardMiddleware, add_v2_infer_route
    from clazzify.serving.metrics import ServingMetrics
    from clazzify.serving.model import ClazzifyKServeModel

    metrics = ServingMetrics()
    model = ClazzifyKServeModel(cfg, metrics, version_override=model_version)
    try:
        model.load()
    except ClazzifyError as e:
        raise click.ClickException(f"cannot load {cfg.model_uri}: {e}") from e
    if not keys:
        log.warning("serving WITHOUT authentication (--insecure)")
    app.add_middleware(GuardMiddleware, keys=keys or None,
                       max_body_bytes=cfg.limits.max_body_bytes, metrics=metrics)
    add_v2_infer_route(app, model)
    server = ModelServer(
        http_port=cfg.http_port, grpc_port=grpc_port, workers=workers,
        # KServe's own gRPC server takes no interceptors; the guarded one is added below.
        enable_grpc=False, max_threads=kserve_args.max_threads,
        max_asyncio_workers=kserve_args.max_asyncio_workers,
        enable_docs_url=kserve_args.enable_docs_url,
        # KServe's timing middleware logs two trace lines per request; /metrics has the
        # same latencies, and on a small CPU the log writes cost throughput.
        enable_latency_logging=False, access_log_format=kserve_args.access_log_format,
        event_loop=kserve_args.event_loop, timeout_keep_alive=kserve_args.timeout_keep_alive,
        ssl_certfile=kserve_args.ssl_certfile, ssl_keyfile=kserve_args.ssl_keyfile,
    )
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    if kserve_args.enable_grpc:
        grpc_server = GuardedGRPCServer(
            grpc_port, server.dataplane, server.model_repository_extension, keys=keys or None,
            metrics=metrics, max_message_bytes=cfg.limits.max_body_bytes,
            grace_period=server.grace_period,
        )
        # ModelServer.start gathers server.servers and stops _grpc_server on SIGTERM.
        server._grpc_server = grpc_server
        server.servers.append(grpc_server.start(kserve_args.max_threads))
    server.start([model])

