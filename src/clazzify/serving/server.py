"""The model server's command line: ``python -m clazzify.serving``, ``python -m serving`` and
``clazzify serve`` all run :func:`main`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from clazzify.core.bundle import serving_threads
from clazzify.core.errors import ClazzifyError, ConfigError
from clazzify.core.imaging import ImageLimits
from clazzify.serving.auth import load_api_keys
from clazzify.serving.config import SERVER_ENGINES, ServerConfig, ServingLimits, parse_model_uri

KEYS_ENV = "CLAZZIFY_API_KEYS"
#: Exit code of a bad input or setting, as every clazzify entry point.
BAD_INPUT = 2
VERSION_ENV = "CLAZZIFY_MODEL_VERSION"
HOST_ENV = "CLAZZIFY_HOST"
log = logging.getLogger("serving")


def kserve_options(extra: list[str]) -> argparse.Namespace:
    """Parse the arguments clazzify has no option of with ``kserve.model_server.parser``
    (``--max_threads``, ``--enable_grpc``, ``--enable_docs_url``, ``--timeout-keep-alive``,
    ...), so a standard ServingRuntime args template works.

    Raises:
        ServeError: an argument neither clazzify nor KServe knows, or a bad value.
    """
    kserve_server = _import_model_server()
    strict = argparse.ArgumentParser(parents=[kserve_server.parser], add_help=False,
                                     allow_abbrev=False, exit_on_error=False)
    try:
        ns, unknown = strict.parse_known_args(extra)
    except argparse.ArgumentError as e:
        raise ServeError(f"{e}: see --help and KServe's ModelServer arguments") from e
    if unknown:
        raise ServeError(
            f"unknown arguments {' '.join(unknown)}: see --help (clazzify's options, each with "
            "KServe's underscore spelling where KServe has one) and kserve.model_server's parser"
        )
    # ModelServer reads the module's parsed arguments (logging, predictor settings) when it
    # is built: give it these, parsed strictly, rather than its own lenient parse of argv.
    kserve_server.args = ns
    return ns


def _import_model_server() -> Any:
    """``kserve.model_server``, imported without its import-time parse of ``sys.argv``
    (which answers a bad value with a 25-line usage dump and exits before our checks)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve.model_server as kserve_server
    finally:
        sys.argv = saved
    return kserve_server


class ServeError(click.ClickException):
    """A bad path, key file, setting or port: one ``Error: ...`` line, exit code 2."""

    exit_code = BAD_INPUT


#: ``--access-log`` values: uvicorn's line for every request, for status >= 400 only, none.
ACCESS_LOG_CHOICES = ("all", "errors", "off")


class _ErrorResponsesOnly(logging.Filter):
    """Pass uvicorn's access records of responses with status >= 400, and any record whose
    arguments are not uvicorn's ``(client, method, path, http_version, status)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[4], int):
            return args[4] >= 400
        return True


def configure_access_log(mode: str) -> None:
    """Apply ``--access-log`` to the ``uvicorn.access`` logger, after KServe configured logging
    and before uvicorn's connections read it (each checks for handlers when it opens).

    Raises:
        ValueError: ``mode`` is not one of :data:`ACCESS_LOG_CHOICES`.
    """
    if mode not in ACCESS_LOG_CHOICES:
        raise ValueError(f"access log mode must be one of {ACCESS_LOG_CHOICES}, got {mode!r}")
    access = logging.getLogger("uvicorn.access")
    for old in [f for f in access.filters if isinstance(f, _ErrorResponsesOnly)]:
        access.removeFilter(old)
    if mode == "off":
        access.handlers = []
        access.propagate = False
    elif mode == "errors":
        access.addFilter(_ErrorResponsesOnly())


def one_line(e: BaseException) -> str:
    """``e``'s message on one line."""
    return " ".join(str(e).split()) or repr(e)


class OneLineCommand(click.Command):
    """A command whose every usage error (a bad option value, an unknown option) ends in
    one ``Error: ...`` line and exit code 2, without click's usage banner."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code if isinstance(e, ServeError) else BAD_INPUT)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
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
              help="auto = OpenVINO on the int8 model (openvino-int8) if the export's int8 "
                   "check passed, else ONNX Runtime on float32 (onnx), else Keras; "
                   "openvino[-bf16] = OpenVINO on the float32 export (check accuracy before "
                   "bf16).")
@click.option("--host", envvar=HOST_ENV, default="127.0.0.1",
              help="Interface to listen on (HTTP and gRPC): 127.0.0.1 is this machine only; "
                   f"0.0.0.0 every interface (the serving image sets ${HOST_ENV}=0.0.0.0: "
                   "a pod's probes and Service reach it on the pod's address).")
@click.option("--http-port", "--http_port", default=8080, type=click.IntRange(1, 65535),
              help="HTTP port.")
@click.option("--grpc-port", "--grpc_port", default=8081, type=click.IntRange(1, 65535),
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
@click.option("--api-keys-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help=f"Accepted bearer keys, one per line (merged with ${KEYS_ENV}).")
@click.option("--admin-keys-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keys for the model repository extension (REST /v2/repository/..., gRPC "
                   "Repository*: index, load, unload), one per line, distinct from the "
                   "data-plane keys. Without it the extension is refused to every key.")
@click.option("--insecure", is_flag=True,
              help="Allow starting with no API key (no authentication).")
@click.option("--max-body-mb", default=10.0, help="Largest request body, in MB (413 above).")
@click.option("--max-images", default=64, help="Most images per request.")
@click.option("--max-pixels", default=ImageLimits.max_pixels,
              help="Largest width*height per image (as ingest).")
@click.option("--max-request-pixels", default=ServingLimits.max_request_pixels,
              help="Most pixels one request may decode, summed over its images (a JPEG counts "
                   "at the DCT scale it is decoded at); checked on the headers before decoding.")
@click.option("--max-decoding-pixels", type=int, default=None,
              help="Most pixels the server decodes at once over all requests (at worst ~9 "
                   "bytes each); a request waits until its pixels fit. At least "
                   f"--max-request-pixels.  [default: {ServingLimits.max_decoding_pixels}, or "
                   "--max-request-pixels if larger]")
@click.option("--min-side", default=ImageLimits.min_side,
              help="Smallest accepted image side (as ingest).")
@click.option("--access-log", type=click.Choice(ACCESS_LOG_CHOICES), default="errors",
              show_default=True,
              help="uvicorn's line per HTTP request: all, errors (status 400 and above: "
                   "refused keys, bad bodies, failures) or off. Every request is counted in "
                   "/metrics either way; at hundreds of requests a second the log writes cost "
                   "throughput.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI for models:/ and runs:/ URIs "
                   "(default: the local store under .clazzify/).")
def main(ctx: click.Context, model_uri: str, model_name: str, model_version: str | None,
         engine: str, host: str, http_port: int, grpc_port: int, workers: int, max_batch_size: int,
         max_latency_ms: float, watch_alias: bool, watch_interval: float,
         api_keys_file: Path | None, admin_keys_file: Path | None, insecure: bool,
         max_body_mb: float, max_images: int,
         max_pixels: int, max_request_pixels: int, max_decoding_pixels: int | None,
         min_side: int, access_log: str,
         tracking_uri: str | None) -> None:
    """Serve a clazzify model over KServe's V1 and V2 (Open Inference) REST and V2 gRPC.

    \b
    POST /v1/models/NAME:predict  {"instances": [{"b64": "<jpeg/png/webp bytes>"}]}
    POST /v2/models/NAME/infer    one BYTES input: base64 strings in JSON, or raw bytes
                                  with the binary extension
    GET  /v2/health/ready, /v2/health/live, /v1/models/NAME, /metrics  (no key needed)
    gRPC inference.GRPCInferenceService on --grpc-port (ServerLive/ServerReady/ModelReady
         need no key)

    Every other call needs 'Authorization: Bearer <key>' (gRPC: the same metadata), with
    keys from --api-keys-file and/or $CLAZZIFY_API_KEYS. The model repository extension
    (/v2/repository/..., gRPC Repository*) answers only keys from --admin-keys-file, and
    no one without it. A bad setting, key file, model or busy port: one 'Error:' line,
    exit code 2.

    KServe's ModelServer arguments (--model_name, --http_port, --grpc_port, --workers,
    --max_threads, --enable_grpc, --enable_docs_url, ...) are accepted as well.
    """
    if max_decoding_pixels is None:
        max_decoding_pixels = max(ServingLimits.max_decoding_pixels, max_request_pixels)
    try:
        cfg = ServerConfig(
            model_uri=model_uri, model_name=model_name, engine=engine, http_port=http_port,
            max_batch_size=max_batch_size, max_latency_ms=max_latency_ms,
            watch_interval_s=watch_interval if watch_alias else 0.0,
            limits=ServingLimits(max_body_bytes=int(max_body_mb * 1024 * 1024),
                                 max_images=max_images, max_request_pixels=max_request_pixels,
                                 max_decoding_pixels=max_decoding_pixels,
                                 image_limits=ImageLimits(min_side=min_side, max_pixels=max_pixels)),
        )
        keys = load_api_keys(_read_keys(api_keys_file, "--api-keys-file"),
                             os.environ.get(KEYS_ENV))
        admin_keys = load_api_keys(_read_keys(admin_keys_file, "--admin-keys-file"))
    except ClazzifyError as e:
        raise ServeError(str(e)) from e
    if admin_keys_file is not None and not admin_keys:
        raise ServeError(f"--admin-keys-file {admin_keys_file} holds no key: put one key per "
                         "line, or leave the option out to keep the control plane closed")
    if admin_keys & keys:
        raise ServeError("a key is both a data-plane key and an admin key: give the control "
                         "plane its own keys (--admin-keys-file)")
    if model_version and cfg.watch_interval_s:
        raise ServeError(f"--model-version (or ${VERSION_ENV}) and --watch-alias exclude "
                         "each other: a watched alias reports the registry's version")
    if not keys and not insecure:
        raise ServeError(
            f"no API key configured: put keys in --api-keys-file or ${KEYS_ENV}, or pass "
            "--insecure to serve without authentication"
        )
    kserve_args = kserve_options(ctx.args)
    from clazzify.serving.lifecycle import ClazzifyModelServer, bind_http, check_port_free

    try:  # the ports first: a busy one fails now, not after the model has loaded
        http_socket = bind_http(host, cfg.http_port)
        if kserve_args.enable_grpc:
            check_port_free(host, grpc_port)
    except ClazzifyError as e:
        raise ServeError(str(e)) from e
    if parse_model_uri(cfg.model_uri).from_registry:
        import mlflow

        from clazzify.registry.tracking import default_tracking_uri

        uri = tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

    from kserve.model_server import app

    if kserve_args.enable_docs_url and app.docs_url is None:
        app.docs_url = "/docs"  # the app was built at import, before the arguments were read
        app.setup()

    from clazzify.serving.grpc_server import GuardedGRPCServer
    from clazzify.serving.http import GuardMiddleware, InferenceFastPath, add_v2_infer_route
    from clazzify.serving.metrics import ServingMetrics
    from clazzify.serving.model import ClazzifyKServeModel

    metrics = ServingMetrics()
    model = ClazzifyKServeModel(cfg, metrics, version_override=model_version)
    try:
        model.load()
    except ClazzifyError as e:
        http_socket.close()
        raise ServeError(f"cannot load {cfg.model_uri}: {one_line(e)}") from e
    if not keys:
        log.warning("serving WITHOUT authentication (--insecure)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.info("listening on %s: reachable from other machines", host)
    app.add_middleware(GuardMiddleware, keys=keys or None, admin_keys=admin_keys,
                       max_body_bytes=cfg.limits.max_body_bytes, metrics=metrics,
                       fast_path=InferenceFastPath(model))
    add_v2_infer_route(app, model)

    def grpc_server(server: ClazzifyModelServer) -> GuardedGRPCServer:
        return GuardedGRPCServer(
            grpc_port, server.dataplane, server.model_repository_extension, keys=keys or None,
            admin_keys=admin_keys, metrics=metrics,
            max_message_bytes=cfg.limits.max_body_bytes, grace_period=server.grace_period,
            host=host,
        )

    server = ClazzifyModelServer(
        http_socket, frozenset({cfg.model_name}),
        grpc_server_factory=grpc_server if kserve_args.enable_grpc else None,
        http_port=cfg.http_port, grpc_port=grpc_port, workers=workers,
        max_threads=kserve_args.max_threads,
        # The default executor's threads decode requests: one per core (KServe's default
        # is cores + 4). At 8 concurrent clients 2 threads did 237-244 img/s against
        # 227-228 for 6 (benchmarks/README.md, "int8"): fewer decoders take fewer turns
        # from the engine's streams.
        max_asyncio_workers=kserve_args.max_asyncio_workers or serving_threads(),
        enable_docs_url=kserve_args.enable_docs_url,
        # KServe's timing middleware logs two trace lines per request; /metrics has the
        # same latencies, and on a small CPU the log writes cost throughput.
        enable_latency_logging=False, access_log_format=kserve_args.access_log_format,
        event_loop=kserve_args.event_loop, timeout_keep_alive=kserve_args.timeout_keep_alive,
        ssl_certfile=kserve_args.ssl_certfile, ssl_keyfile=kserve_args.ssl_keyfile,
    )
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    configure_access_log(access_log)
    server.start([model])


def _read_keys(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {flag} {path}: {e}: give a readable text file with "
                          "one key per line") from e
