"""Who may call what: data-plane keys the data plane, admin keys the control plane."""

from __future__ import annotations

import pytest

from clazzify.serving.auth import authorize, is_control_path, route_label
from clazzify.serving.grpc_server import grpc_route, is_control_method

pytestmark = pytest.mark.unit

DATA = frozenset({"data-key-0123456789abcdef", "data-key-rotated-0123456789"})
ADMIN = frozenset({"admin-key-0123456789abcdefgh"})
D, A = sorted(DATA)[0], next(iter(ADMIN))


@pytest.mark.parametrize(("token", "control", "keys", "admin", "status", "words"), [
    # the data plane
    (D, False, DATA, ADMIN, 0, ""),
    (A, False, DATA, ADMIN, 401, "invalid API key"),  # an admin key predicts nothing
    (None, False, DATA, ADMIN, 401, "missing API key"),
    ("guess-0123456789abcdef", False, DATA, ADMIN, 401, "invalid API key"),
    (None, False, None, frozenset(), 0, ""),  # --insecure
    # the control plane, with admin keys
    (A, True, DATA, ADMIN, 0, ""),
    (D, True, DATA, ADMIN, 403, "data-plane key may not"),
    (None, True, DATA, ADMIN, 401, "missing API key"),
    ("guess-0123456789abcdef", True, DATA, ADMIN, 401, "invalid API key"),
    (A, True, None, ADMIN, 0, ""),  # --insecure still needs the admin key here
    (None, True, None, ADMIN, 401, "missing API key"),
    # the control plane, without admin keys: off for everyone
    (D, True, DATA, frozenset(), 403, "is off on this server"),
    (None, True, DATA, frozenset(), 403, "is off on this server"),
    (None, True, None, frozenset(), 403, "is off on this server"),
])
def test_authorize(token, control, keys, admin, status, words):
    verdict = authorize(token, control=control, keys=keys, admin_keys=admin)
    assert verdict.status == status
    assert words in verdict.error


@pytest.mark.parametrize(("path", "control"), [
    ("/v2/repository/models/clazzify/unload", True),
    ("/v2/repository/models/clazzify/load", True),
    ("/v2/repository/index", True),
    ("/v2/repository", True),
    ("/v2/repositoryx", False),
    ("/v2/models/clazzify/infer", False),
    ("/v1/models/clazzify:predict", False),
])
def test_control_paths(path, control):
    assert is_control_path(path) is control
    assert (route_label("POST", path) == "repository") is control


@pytest.mark.parametrize(("method", "control", "route"), [
    ("/inference.GRPCInferenceService/RepositoryModelUnload", True, "grpc_repository"),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", True, "grpc_repository"),
    ("/inference.GRPCInferenceService/RepositoryIndex", True, "grpc_repository"),
    ("/inference.GRPCInferenceService/ModelInfer", False, "grpc_infer"),
    ("/inference.GRPCInferenceService/ServerReady", False, "grpc_health"),
    ("/inference.GRPCInferenceService/ModelMetadata", False, "grpc_metadata"),
])
def test_control_methods(method, control, route):
    assert is_control_method(method) is control
    assert grpc_route(method) == route
