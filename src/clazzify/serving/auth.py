"""Who may call the model server: API keys, bearer tokens, the open (health/metrics) paths."""


import hashlib
import hmac
import re
from collections.abc import Iterable

from clazzify.core.errors import ConfigError

#: Name of the single V2 input tensor (any name is accepted; this is what metadata advertises).
V2_INPUT = "image"
#: Header of the V2 binary-data extension: length of the JSON part before the raw tensors.
MIN_KEY_LENGTH = 16
_OPEN_PATHS = re.compile(
    r"^(?:/|/metrics|/v2/health/(?:live|ready)|/v1/models/[^/:]+|/v2/models/[^/]+/ready)$"
)



def load_api_keys(file_text: str | None = None, env_value: str | None = None) -> frozenset[str]:
    """The accepted API keys from a keys file's text and/or an environment value.

    Keys are separated by newlines, commas or spaces; ``#`` starts a comment. Several keys
    may be active at once, so a key can be rotated without downtime.

    Raises:
        ConfigError: a key shorter than :data:`MIN_KEY_LENGTH` characters.
    """
    keys: set[str] = set()
    for text in (file_text, env_value):
        if not text:
            continue
        for line in text.splitlines():
            for key in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
                if not key:
                    continue
                if len(key) < MIN_KEY_LENGTH:
                    raise ConfigError(
                        f"an API key of {len(key)} characters is too short to be secret: use at "
                        f"least {MIN_KEY_LENGTH} (e.g. python -c 'import secrets; "
                        "print(secrets.token_urlsafe(32))')"
                    )
                keys.add(key)
    return frozenset(keys)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_matches(token: str | None, keys: Iterable[str]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time.

    Every key is compared (no early exit) and the comparison runs on SHA-256 digests,
    so neither the position of a match nor a key's length shows in the timing.
    """
    probe = _digest(token or "")
    found = False
    for key in keys:
        found |= hmac.compare_digest(probe, _digest(key))
    return found and bool(token)


def is_open_path(method: str, path: str) -> bool:
    """Whether a request needs no API key: liveness, readiness and ``/metrics`` GETs."""
    return method in ("GET", "HEAD") and bool(_OPEN_PATHS.match(path))


def route_label(method: str, path: str) -> str:
    """A low-cardinality route name for metrics (never the raw path)."""
    if method == "POST" and path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1_predict"
    if method == "POST" and path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2_infer"
    if path == "/metrics":
        return "metrics"
    if is_open_path("GET", path):
        return "health"
    if path.startswith(("/v1/", "/v2")):
        return "metadata"
    return "other"


