"""Scoring commands: the worker, enqueue/score, the scores database and the relabel round trip."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from clazzify.cli.main import main
from clazzify.core.errors import StorageError

_DB_HELP = "Scores database: postgresql://user@host/db or sqlite:///path (env CLAZZIFY_DB_URL)."


def _db_option(fn):
    from clazzify.scoring.database import DEFAULT_DB_URL

    return click.option("--db", "db_url", envvar="CLAZZIFY_DB_URL", default=DEFAULT_DB_URL,
                        show_default=True, help=_DB_HELP)(fn)


def _model_option(fn):
    return click.option("--model-name", envvar="CLAZZIFY_MODEL_NAME", default="clazzify",
                        show_default=True, help="Model name the scores are stored under.")(fn)


def _endpoint_options(fn):
    options = [
        click.option("--endpoint", envvar="CLAZZIFY_ENDPOINT", required=True,
                     help="Model server URL, e.g. http://127.0.0.1:8080 (env CLAZZIFY_ENDPOINT)."),
        click.option("--api-key", envvar="CLAZZIFY_API_KEY", default=None,
                     help="API key of the model server (env CLAZZIFY_API_KEY)."),
        click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="Read the API key from the first line of this file."),
        click.option("--timeout", default=30.0, show_default=True,
                     help="Seconds one inference request may take."),
        click.option("--class-names", default="",
                     help="Comma-separated class order, if the server does not name its classes."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return _model_option(fn)


def _endpoint_config(endpoint: str, model_name: str, api_key: str | None,
                     api_key_file: Path | None, timeout: float, class_names: str):
    from clazzify.scoring.endpoint_client import EndpointConfig

    if api_key_file is not None:
        lines = api_key_file.read_text().split()
        if not lines:
            raise click.BadParameter(f"{api_key_file} is empty", param_hint="--api-key-file")
        api_key = lines[0]
    names = tuple(n.strip() for n in class_names.split(",") if n.strip())
    return EndpointConfig(url=endpoint, model_name=model_name, api_key=api_key,
                          timeout_s=timeout, class_names=names)


def _quiet_libraries() -> None:
    """pika, httpx and alembic log every connection, request and migration plugin at INFO.

    pika also logs each failed connection as several ERROR lines with a traceback; the
    worker's own line (or the command's one ``Error:`` line) says it once. ``-v`` keeps all.
    """
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in ("pika", "httpx", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def _open_repo(db_url: str, *, read_only: bool = False):
    """Open the scores database; ``read_only``: a query, which never creates or migrates one.

    Raises:
        StorageError: missing (with the ``createdb`` or ``--db`` fix), unreachable, or (for a
            query) holding no scores yet.
    """
    import sqlalchemy as sa
    import sqlalchemy.exc

    from clazzify.scoring.database import missing_database_hint, sqlite_path
    from clazzify.scoring.scores import ScoreRepository

    path = sqlite_path(db_url)
    if read_only and path is not None and not path.is_file():
        raise StorageError(
            f"no scores database at {path}: pass --db (or set CLAZZIFY_DB_URL) to the database "
            "the workers write, e.g. --db postgresql://user@host/clazzify"
        )
    try:
        repo = ScoreRepository.open(db_url, migrate=not read_only)
        if read_only and not sa.inspect(repo.engine).has_table("scores"):
            raise StorageError(
                f"{repo.url} holds no scores yet: run `clazzify worker` or `clazzify score` "
                "into it first, or pass --db to the database the workers write"
            )
        return repo
    except sqlalchemy.exc.OperationalError as e:
        raise StorageError(missing_database_hint(db_url, e)) from e


def _check_label(repo, label: str, model_name: str) -> None:
    """Refuse a class the model never scored (a typo would print an empty table)."""
    known = repo.class_names(model_name)
    if label not in known:
        raise click.BadParameter(
            f"{label!r} is not a class of model {model_name!r} in {repo.url}: use one of "
            f"{', '.join(known) or '(none: no scores of this model yet; check --model-name)'}",
            param_hint="--label",
        )


def _emit(rows: list[dict], fmt: str, fields: list[str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if fmt == "csv":
        import csv

        from clazzify.core.csvsafe import escape_row

        writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(escape_row(r) for r in rows)
        return
    if not rows:
        click.echo("(no rows)")
        return
    cells = [[f"{r[f]:.4f}" if isinstance(r[f], float) else str(r[f] if r[f] is not None else "")
              for f in fields] for r in rows]
    widths = [max(len(f), *(len(c[i]) for c in cells)) for i, f in enumerate(fields)]
    click.echo("  ".join(f.ljust(w) for f, w in zip(fields, widths, strict=True)))
    for c in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def _request_options(fn):
    fn = click.option("--request-concurrency", default=2, show_default=True,
                      help="Requests of one batch in flight at once (the server decodes one "
                           "while it infers another).")(fn)
    return click.option("--request-size", default=16, show_default=True,
                        help="Images per inference request.")(fn)


_FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]),
                       default="table", show_default=True)


@main.command("worker")
@_endpoint_options
@_db_option
@click.option("--amqp-url", envvar="CLAZZIFY_AMQP_URL",
              default="amqp://guest:guest@127.0.0.1:5672/%2F", show_default=True,
              help="RabbitMQ URL (env CLAZZIFY_AMQP_URL).")
@click.option("--queue", envvar="CLAZZIFY_QUEUE", default="clazzify.uploads", show_default=True,
              help="Durable queue of upload events.")
@click.option("--dead-letter-queue", default="", help="Default: <queue>.dead")
@click.option("--exchange", default="",
              help="Also bind the queue to this topic exchange (where MinIO publishes).")
@click.option("--batch-size", default=32, show_default=True,
              help="Messages scored together and committed in one transaction.")
@_request_options
@click.option("--batch-wait", default=0.2, show_default=True,
              help="Seconds to wait for a batch to fill once a message is in.")
@click.option("--batches-in-flight", default=2, show_default=True,
              help="Batches processed at once: the server scores one while another is "
                   "read, committed and acknowledged.")
@click.option("--prefetch", default=0, show_default=True,
              help="Unacknowledged messages held at most (0: the batch size times "
                   "batches-in-flight + 1).")
@click.option("--fetch-threads", default=8, show_default=True, help="Parallel image downloads.")
@click.option("--max-retry-delay", default=30.0, show_default=True,
              help="Longest wait between retries of a transient failure (the wait doubles).")
@click.option("--metrics-port", type=int, default=None, envvar="CLAZZIFY_METRICS_PORT",
              help="Serve Prometheus /metrics here (env CLAZZIFY_METRICS_PORT; the manifest "
                   "sets 9100).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per log line.")
@click.option("--idle-exit", type=float, default=None,
              help="Exit after this many seconds without messages (default: run until SIGTERM).")
@click.option("--allow-source", "allow_sources", multiple=True, metavar="S3_OR_FOLDER",
              help="A bucket (s3://uploads, s3://uploads/prefix/) or folder events may name; "
                   "repeat it. Env CLAZZIFY_ALLOWED_SOURCES (comma separated). Default: the "
                   "folder the worker runs in, no bucket. Others are dead-lettered "
                   "(source_not_allowed).")
@click.option("--max-image-bytes", default=8_000_000, show_default=True,
              help="Larger photos are dead-lettered (too_large) after a stat, never read.")
@click.option("--max-deliveries", default=5, show_default=True,
              help="A message delivered this many times is dead-lettered (delivery_limit).")
@click.option("--max-attempts", default=6, show_default=True,
              help="Tries of a photo whose storage fails transiently before it is "
                   "dead-lettered (retries_exhausted).")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default="classic",
              show_default=True, help="Type to declare a new queue with (quorum: the broker "
                                      "counts deliveries).")
def worker_cmd(endpoint, model_name, api_key, api_key_file, timeout, class_names, db_url,
               amqp_url, queue, dead_letter_queue, exchange, batch_size, request_size,
               request_concurrency, batch_wait, batches_in_flight, prefetch, fetch_threads,
               max_retry_delay, metrics_port, log_format, idle_exit, allow_sources,
               max_image_bytes, max_deliveries, max_attempts, queue_type) -> None:
    """Score upload events from RabbitMQ into the scores database.

    Accepts MinIO/S3 ObjectCreated notifications and plain {"image_id", "uri",
    "restaurant_id"?, "source"?} messages. A message is acknowledged only after its
    scores are committed; transient failures are retried with backoff; messages that
    can never be scored go to the dead-letter queue with an x-clazzify-reason header.
    SIGTERM finishes the batches in flight, then exits.
    """
    import signal
    import threading

    from clazzify.scoring.consumer import ConsumerConfig, run_worker
    from clazzify.scoring.metrics import WorkerMetrics, use_json_logs
    from clazzify.scoring.sources import SourcePolicy
    from clazzify.scoring.worker import ScoringConfig

    if log_format == "json":
        use_json_logs()
    _quiet_libraries()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    endpoint_cfg = _endpoint_config(endpoint, model_name, api_key, api_key_file, timeout,
                                    class_names)
    consumer_cfg = ConsumerConfig(amqp_url=amqp_url, queue=queue,
                                  dead_letter_queue=dead_letter_queue, exchange=exchange,
                                  batch_size=batch_size, batch_wait_s=batch_wait,
                                  batches_in_flight=batches_in_flight,
                                  prefetch=prefetch, idle_exit_s=idle_exit,
                                  backoff_max_s=max_retry_delay, max_deliveries=max_deliveries,
                                  max_attempts=max_attempts, queue_type=queue_type)
    sources = (SourcePolicy.parse(allow_sources, default_root=Path.cwd()) if allow_sources
               else SourcePolicy.from_env(default_root=Path.cwd()))
    logging.getLogger(__name__).info("allowed sources: %s", sources.describe())
    scoring_cfg = ScoringConfig(request_images=request_size,
                                request_concurrency=request_concurrency,
                                fetch_threads=fetch_threads, default_model_name=model_name,
                                max_image_bytes=max_image_bytes, sources=sources)
    metrics = WorkerMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)
    run_worker(consumer_cfg, endpoint_cfg, db_url, scoring_cfg, stop=stop, metrics=metrics)


@main.command("enqueue")
@click.argument("source")
@click.option("--amqp-url", envvar="CLAZZIFY_AMQP_URL",
              default="amqp://guest:guest@127.0.0.1:5672/%2F", show_default=True,
              help="RabbitMQ URL (env CLAZZIFY_AMQP_URL).")
@click.option("--queue", envvar="CLAZZIFY_QUEUE", default="clazzify.uploads", show_default=True)
@click.option("--source-tag", default="enqueue", show_default=True,
              help="Stored as the photos' source when the listing gives none.")
@click.option("--restaurant", "restaurant_id", default=None,
              help="Restaurant id of every photo (a manifest's restaurant_id column wins); "
                   "what `clazzify images --restaurant` selects on.")
def enqueue_cmd(source, amqp_url, queue, source_tag, restaurant_id) -> None:
    """Publish an upload event per photo of SOURCE (folder, s3:// prefix or manifest).

    What an upload service (or a MinIO bucket notification) does in production; handy to
    feed `clazzify worker` by hand.
    """
    import dataclasses

    from clazzify.scoring.backfill import list_collection
    from clazzify.scoring.consumer import ConsumerConfig, publish_events

    _quiet_libraries()
    events = list_collection(source, source_tag)
    if restaurant_id:
        events = (e if e.restaurant_id else dataclasses.replace(e, restaurant_id=restaurant_id)
                  for e in events)
    n = publish_events(ConsumerConfig(amqp_url=amqp_url, queue=queue), events)
    click.echo(f"published {n} upload events to {queue}")


@main.command("score")
@click.option("--source", required=True,
              help="Folder, s3://bucket/prefix or CSV/JSONL manifest (uri[,image_id,...]).")
@_endpoint_options
@_db_option
@click.option("--batch-size", default=32, show_default=True, help="Images per commit.")
@_request_options
@click.option("--progress/--no-progress", default=True, show_default=True)
def score_cmd(source, endpoint, model_name, api_key, api_key_file, timeout, class_names, db_url,
              batch_size, request_size, request_concurrency, progress) -> None:
    """Backfill: score every photo of SOURCE not yet scored by the served model version.

    Resumable: a second run skips what the first committed.
    """
    from clazzify.scoring.backfill import BackfillConfig, score_collection
    from clazzify.scoring.endpoint_client import EndpointClient
    from clazzify.scoring.worker import ScoringConfig

    _quiet_libraries()
    endpoint_cfg = _endpoint_config(endpoint, model_name, api_key, api_key_file, timeout,
                                    class_names)
    repo = _open_repo(db_url)
    with EndpointClient(endpoint_cfg) as client:
        scoring = ScoringConfig(request_images=request_size,
                                request_concurrency=request_concurrency,
                                default_model_name=model_name)
        report = score_collection(source, client, repo, BackfillConfig(batch_size=batch_size),
                                  scoring=scoring, progress=progress)
    click.echo(report.summary())


@main.command("images")
@click.option("--restaurant", default=None,
              help="Restaurant id (required unless --unknown, which lists every restaurant's).")
@click.option("--label", default="ambiance", show_default=True,
              help="Predicted class to list; 'unknown' is --unknown.")
@click.option("--unknown", "unknown", is_flag=True,
              help="List the photos the model flagged as none of its classes instead.")
@click.option("--min-prob", default=0.0, show_default=True, help="Lowest probability shown.")
@click.option("--limit", default=50, show_default=True)
@_model_option
@_db_option
@_FORMAT
def images_cmd(restaurant, label, unknown, min_prob, limit, model_name, db_url, fmt) -> None:
    """A restaurant's photos predicted as LABEL, most confident first.

    E.g. surface the ambiance shots on a restaurant page whose photos are mostly food.
    Photos the model flagged as none of its classes are in no class's list: --unknown
    (or --label unknown) lists them, least like the classes first.
    """
    from clazzify.scoring.endpoint_client import UNKNOWN

    repo = _open_repo(db_url, read_only=True)
    if unknown or label == UNKNOWN:
        rows = repo.unknown_images(restaurant, model_name=model_name, limit=limit)
        _emit(rows, fmt, ["image_id", "uri", "restaurant_id", "top_class", "top_probability",
                          "in_distribution_score", "model_version"])
        return
    if not restaurant:
        raise click.BadParameter("name the restaurant whose photos to list (or pass --unknown)",
                                 param_hint="--restaurant")
    _check_label(repo, label, model_name)
    rows = repo.restaurant_images(restaurant, label, model_name=model_name,
                                  min_probability=min_prob, limit=limit)
    _emit(rows, fmt, ["image_id", "uri", "probability", "model_version"])


@main.command("review-queue")
@click.option("--labels", default="human,menu", show_default=True,
              help="Comma-separated classes, one moderation queue each.")
@click.option("--min-prob", default=0.5, show_default=True,
              help="Lowest probability of the class that puts a photo in its queue.")
@click.option("--limit", default=1000, show_default=True)
@_model_option
@_db_option
@_FORMAT
def review_queue_cmd(labels, min_prob, limit, model_name, db_url, fmt) -> None:
    """Photos for moderators: people and selfies to photo moderation, menus to content."""
    names = [n.strip() for n in labels.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("name at least one class", param_hint="--labels")
    repo = _open_repo(db_url, read_only=True)
    for name in names:
        _check_label(repo, name, model_name)
    rows = repo.likely_photos(names, model_name=model_name, min_probability=min_prob, limit=limit)
    _emit(rows, fmt, ["queue", "image_id", "uri", "restaurant_id", "probability", "label"])


@main.command("relabel-export")
@click.option("-o", "--out", "out", required=True, help="CSV to write (local path or s3://).")
@click.option("--max-prob", default=0.6, show_default=True,
              help="Export photos whose top probability is below this.")
@click.option("--limit", default=10_000, show_default=True)
@_model_option
@_db_option
def relabel_export_cmd(out, max_prob, limit, model_name, db_url) -> None:
    """Low-confidence photos and disagreements with manual labels, as a CSV for moderators.

    Moderators fill the `corrected_label` column; `clazzify relabel-import` reads the result.
    """
    from clazzify.scoring.relabel import EXPORT_FIELDS, export_rows, write_csv

    rows = _open_repo(db_url, read_only=True).relabel_candidates(
        model_name=model_name, max_probability=max_prob, limit=limit)
    n = write_csv(out, EXPORT_FIELDS, export_rows(rows))
    click.echo(f"wrote {n} photos to {out}: fill the corrected_label column, then "
               f"`clazzify relabel-import {out} -o manifest.csv`")


@main.command("relabel-import")
@click.argument("file")
@click.option("-o", "--out", "out", required=True,
              help="uri,label manifest to write, for `clazzify ingest` / the pipeline's --source.")
@click.option("--classes", default="",
              help="Comma-separated allowed labels (default: the classes in the database, "
                   "when --record-labels).")
@click.option("--keep-unchanged/--corrected-only", default=False, show_default=True,
              help="Also keep rows without a corrected_label, with their current label.")
@click.option("--record-labels/--no-record-labels", default=False, show_default=True,
              help="Also store the answers as manual labels in the database.")
@_model_option
@_db_option
def relabel_import_cmd(file, out, classes, keep_unchanged, record_labels, model_name,
                       db_url) -> None:
    """Turn a moderated relabel CSV into a training manifest (uri,label).

    FILE comes from `clazzify relabel-export` or `clazzify find-label-issues`, with the
    corrected_label column filled in.
    """
    from clazzify.scoring.relabel import read_relabels, write_manifest

    allowed = [c.strip() for c in classes.split(",") if c.strip()]
    repo = _open_repo(db_url) if record_labels else None
    if repo is not None and not allowed:
        allowed = repo.class_names(model_name)
    answers, skipped = read_relabels(file, allowed, keep_unchanged=keep_unchanged)
    n = write_manifest(out, answers)
    if repo is not None:
        repo.add_manual_labels(((a.image_id, a.label) for a in answers),
                               labelled_by="relabel-import")
    click.echo(f"{n} labelled photos -> {out} ({skipped} rows skipped without a label)")


@main.command("drift-rules")
@click.option("--manifest", "manifest", default=None,
              help="The champion's training manifest (uri,label CSV/JSONL): its class counts.")
@click.option("--class-counts", default="",
              help="Or the counts themselves: food=470,human=415,... (from the model's report).")
@click.option("-o", "--out", "out", default="-", show_default=True,
              help="File to write (manifests/monitoring/prometheus-rules.yaml), '-' for stdout.")
@_model_option
@click.option("--psi-threshold", default=0.2, show_default=True,
              help="Class-mix alert: population stability index above this.")
@click.option("--unknown-floor", default=0.05, show_default=True,
              help="Unknown-rate alert: never below this share of photos.")
@click.option("--confidence-drop", default=0.10, show_default=True,
              help="Confidence alert: the 15-minute mean this far below the day's.")
def drift_rules_cmd(manifest, class_counts, out, model_name, psi_threshold, unknown_floor,
                    confidence_drop) -> None:
    """Write the drift watch's PrometheusRule from the training mix (docs/monitoring.md)."""
    from clazzify.core import storage
    from clazzify.scoring import drift_rules

    if bool(manifest) == bool(class_counts):
        raise click.BadParameter("pass exactly one of --manifest or --class-counts",
                                 param_hint="--manifest / --class-counts")
    counts = (drift_rules.class_counts_from_manifest(manifest) if manifest
              else drift_rules.parse_class_counts(class_counts))
    cfg = drift_rules.DriftRuleConfig(model_name=model_name, psi_threshold=psi_threshold,
                                      unknown_floor=unknown_floor, confidence_drop=confidence_drop)
    text = drift_rules.render(drift_rules.training_mix(counts), cfg)
    if out == "-":
        click.echo(text, nl=False)
    else:
        storage.write_bytes(out, text.encode())
        click.echo(f"wrote the drift rules for {len(counts)} classes to {out}")
