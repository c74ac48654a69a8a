"""What the model server is configured with: request limits, where the model comes from, engines."""


import re
from dataclasses import dataclass, field

from clazzify.core.bundle import ENGINE_CHOICES
from clazzify.core.errors import ConfigError
from clazzify.core.imaging import ImageLimits

#: The model server's ``--engine`` choices: ``auto`` (int8 when its check passed, else ONNX,
#: else Keras) and every engine of the one engine table, clazzify.core.bundle.ENGINES.
SERVER_ENGINES = ENGINE_CHOICES
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")



@dataclass(frozen=True)
class ServingLimits:
    """What one request may carry.

    Attributes:
        max_body_bytes: largest request body accepted (HTTP 413 above it).
        max_images: most images in one request.
        image_limits: size limits of one image (the decompression-bomb guard among them),
            the ones training applied.
        max_request_pixels: most pixels one request may decode, summed over its images
            (a JPEG counts at the DCT scale it is decoded at), read from the headers before
            any image is decoded. It bounds a request's decode time and memory: a few
            50 MP PNGs of a few KB each are refused, not decoded.
        max_decoding_pixels: most pixels the whole server decodes at once, over all
            requests; a request waits until its pixels fit. It bounds decode memory under
            concurrency (~9 bytes per pixel at worst, a 16-bit PNG: 100 MP ~ 0.9 GB).
    """

    max_body_bytes: int = 10 * 1024 * 1024
    max_images: int = 64
    image_limits: ImageLimits = ImageLimits()
    max_request_pixels: int = 100_000_000
    max_decoding_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not 1 <= self.max_images <= 4096:
            raise ConfigError(f"max_images must be within [1, 4096], got {self.max_images}")
        if self.max_decoding_pixels < self.max_request_pixels:
            raise ConfigError(
                f"max_decoding_pixels={self.max_decoding_pixels} is below "
                f"max_request_pixels={self.max_request_pixels}: a request within its budget "
                "could never be decoded; raise --max-decoding-pixels"
            )
        if self.max_request_pixels < self.image_limits.min_side**2:
            raise ConfigError(
                f"max_request_pixels={self.max_request_pixels} is below "
                f"min_side**2={self.image_limits.min_side**2}: no request could pass; raise "
                "--max-request-pixels"
            )


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, parsed from a model URI.

    Attributes:
        kind: ``alias`` (models:/name@alias), ``version`` (models:/name/3), ``run``
            (runs:/id/path), ``s3`` (s3://bucket/prefix) or ``local`` (a folder).
        uri: the URI as given.
        registered_name: the registered model's name (``alias`` and ``version`` kinds).
        alias: the alias (``alias`` kind).
        version: the version (``version`` kind).
    """

    kind: str
    uri: str
    registered_name: str | None = None
    alias: str | None = None
    version: str | None = None

    @property
    def from_registry(self) -> bool:
        return self.kind in ("alias", "version", "run")


def parse_model_uri(uri: str) -> ModelSource:
    """Classify a model URI.

    Accepted: ``models:/name@alias``, ``models:/name/version``, ``runs:/run_id/path``,
    ``s3://bucket/prefix``, ``file:///path`` or a local folder such as ``/mnt/models``
    (where KServe's storage initializer puts the model).

    Raises:
        ConfigError: an empty URI, a ``models:/`` URI without alias or version, or a
            scheme this server cannot read.
    """
    uri = uri.strip()
    if not uri:
        raise ConfigError(
            "model URI is empty: pass --model-uri models:/clazzify@champion or a folder"
        )
    if uri.startswith("models:/"):
        rest = uri.removeprefix("models:/").strip("/")
        if "@" in rest:
            name, _, alias = rest.partition("@")
            if name and alias and "/" not in alias:
                return ModelSource("alias", uri, registered_name=name, alias=alias)
        else:
            name, _, version = rest.partition("/")
            if name and version.isdigit():
                return ModelSource("version", uri, registered_name=name, version=version)
        raise ConfigError(
            f"model URI {uri!r} names no alias or version: use models:/NAME@ALIAS "
            "(e.g. models:/clazzify@champion) or models:/NAME/VERSION"
        )
    if uri.startswith("runs:/"):
        if len(uri.removeprefix("runs:/").strip("/").split("/")) < 2:
            raise ConfigError(f"run URI {uri!r} needs a path after the run id: runs:/RUN_ID/model")
        return ModelSource("run", uri)
    if uri.startswith("s3://"):
        if len(uri) <= len("s3://") or uri[len("s3://")] == "/":
            raise ConfigError(f"S3 URI {uri!r} has no bucket: use s3://bucket/prefix")
        return ModelSource("s3", uri)
    if uri.startswith("file://") or "://" not in uri:
        return ModelSource("local", uri)
    raise ConfigError(
        f"cannot serve from {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, "
        "runs:/RUN_ID/PATH, s3://bucket/prefix or a local folder"
    )


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the model server.

    Attributes:
        model_uri: where the model comes from (see :func:`parse_model_uri`).
        model_name: the name in the URLs (``/v1/models/<name>:predict``).
        engine: ``auto`` (ONNX Runtime, falling back to Keras), ``onnx``, ``keras``,
            ``openvino`` or ``openvino-bf16`` (OpenVINO on the ONNX export).
        http_port: port of the HTTP server.
        max_batch_size: most images run through the engine at once.
        max_latency_ms: longest a request waits for others to share its batch.
        watch_interval_s: re-resolve the MLflow alias this often and swap in a new
            version; 0 disables watching.
        limits: what one request may carry.
    """

    model_uri: str = "models:/clazzify@champion"
    model_name: str = "clazzify"
    engine: str = "auto"
    http_port: int = 8080
    max_batch_size: int = 4  # benchmarks/results/serving_sizes.json best_batch_size
    max_latency_ms: float = 5.0
    watch_interval_s: float = 0.0
    limits: ServingLimits = field(default_factory=ServingLimits)

    def __post_init__(self) -> None:
        source = parse_model_uri(self.model_uri)
        if not _MODEL_NAME.match(self.model_name):
            raise ConfigError(
                f"model name {self.model_name!r} is not URL-safe: "
                "use letters, digits, '.', '_' or '-'"
            )
        if self.engine not in SERVER_ENGINES:
            raise ConfigError(
                f"unknown engine {self.engine!r}: choose one of {', '.join(SERVER_ENGINES)}"
            )
        if not 1 <= self.http_port <= 65535:
            raise ConfigError(f"http_port must be within [1, 65535], got {self.http_port}")
        if not 1 <= self.max_batch_size <= 1024:
            raise ConfigError(f"max_batch_size must be within [1, 1024], got {self.max_batch_size}")
        if not 0.0 <= self.max_latency_ms <= 1000.0:
            raise ConfigError(f"max_latency_ms must be within [0, 1000], got {self.max_latency_ms}")
        if self.watch_interval_s < 0:
            raise ConfigError(f"watch_interval_s must be >= 0, got {self.watch_interval_s}")
        if self.watch_interval_s and source.kind != "alias":
            raise ConfigError(
                f"--watch-alias needs a models:/NAME@ALIAS URI, not {self.model_uri!r}: "
                "only an alias can move to a new version"
            )


