"""The clazzify model server: a KServe ``Model`` over :mod:`clazzify.predict`.

Run it with ``python -m serving`` or ``clazzify serve`` (``--help`` lists the options).
Modules: :mod:`serving.model` (the ``kserve.Model``), :mod:`serving.engine` (fetching and
loading a model, alias watching), :mod:`serving.batching` (adaptive batching),
:mod:`serving.http` (API keys, body limit, request metrics, the V2 infer route) and
:mod:`serving.metrics` (Prometheus metrics).
"""
