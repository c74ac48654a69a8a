"""Who may call the model server: API keys, bearer tokens, the open (health/metrics) paths."""


import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from clazzify.core.errors import ConfigError

MIN_KEY_LENGTH = 16
_OPEN_PATHS = re.compile(
    r"^(?:/|/metrics|/v2/health/(?:live|ready)|/v1/models/[^/:]+|/v2/models/[^/]+/ready)$"
)
#: KServe's model repository extension (index, load, unload): the control plane.
_CONTROL_PATHS = re.compile(r"^/v2/repository(?:/.*)?$")
#: What a refused control-plane call is told.
CONTROL_OFF = ("the model repository extension (index, load, unload) is off on this server: "
               "start it with --admin-keys-file to allow it to admin keys")
CONTROL_DENIED = ("a data-plane key may not index, load or unload models: use a key from "
                  "--admin-keys-file")



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


def is_control_path(path: str) -> bool:
    """Whether ``path`` belongs to the model repository extension (``/v2/repository/...``)."""
    return bool(_CONTROL_PATHS.match(path))


@dataclass(frozen=True)
class Verdict:
    """What the edge does with a call: pass it on (``status`` 0) or refuse it.

    Attributes:
        status: 0 to pass, else 401 (no or unknown key) or 403 (a known key, not allowed).
        error: the refusal's message.
    """

    status: int = 0
    error: str = ""


PASS = Verdict()


def authorize(token: str | None, *, control: bool, keys: frozenset[str] | None,
              admin_keys: frozenset[str]) -> Verdict:
    """Who may make a call: data-plane keys the data plane, admin keys the control plane.

    Args:
        token: the caller's bearer token, None when it sent none.
        control: the call is the model repository extension's (index, load, unload).
        keys: the data-plane keys; None when the server runs ``--insecure``.
        admin_keys: the control-plane keys; empty turns the control plane off for all.

    Each key works on its own plane only: a data-plane key never unloads the model, and an
    admin key (a rarely used secret) is not accepted for predictions.
    """
    if control:
        if not admin_keys:
            return Verdict(403, CONTROL_OFF)
        if key_matches(token, admin_keys):
            return PASS
        if token is not None and keys and key_matches(token, keys):
            return Verdict(403, CONTROL_DENIED)
    elif keys is None or key_matches(token, keys):
        return PASS
    reason = "missing" if token is None else "invalid"
    return Verdict(401, f"{reason} API key: send 'Authorization: Bearer <key>'")


def route_label(method: str, path: str) -> str:
    """A low-cardinality route name for metrics (never the raw path)."""
    if method == "POST" and path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1_predict"
    if method == "POST" and path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2_infer"
    if path == "/metrics":
        return "metrics"
    if is_control_path(path):
        return "repository"
    if is_open_path("GET", path):
        return "health"
    if path.startswith(("/v1/", "/v2")):
        return "metadata"
    return "other"


