"""The model server: a KServe ``Model`` over pure functions.

- :mod:`.config`: limits, where the model comes from, engines;
- :mod:`.auth`: API keys, admin keys, and the open (health, metrics) paths;
- :mod:`.protocol`: V1/V2 payloads in, pixels to the model, answers out (pure functions);
- :mod:`.engine`: fetching and loading a model, alias watching;
- :mod:`.batching`: adaptive batching;
- :mod:`.model`: the ``kserve.Model``;
- :mod:`.http`: API keys, body limit, request metrics, the V2 infer route as middleware;
- :mod:`.lifecycle`: readiness from the model, the repository's reload, binding the ports;
- :mod:`.grpc_server`: V2 gRPC behind the same keys (admin keys for ``Repository*``);
- :mod:`.metrics`: Prometheus metrics;
- :mod:`.server`: the command line that starts it.
"""
