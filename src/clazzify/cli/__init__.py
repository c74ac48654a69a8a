"""The ``clazzify`` command line: one click group (:mod:`.main`), its commands by subsystem.

- :mod:`.training`: demo-data, ingest, preprocess, train, evaluate, find-label-issues;
- :mod:`.scoring`: worker, enqueue, score, images, review-queue, relabel-export/-import;
- :mod:`.serving`: serve, rollback;
- :mod:`.review`: review-ui (the moderators' web page) and its users.

:func:`run_command` runs any other click entry point (``python -m pipelines.train``,
``python -m serving``) under the same error contract as ``clazzify``.
"""

from clazzify.cli import review, scoring, serving, training  # noqa: F401  (registers the commands)
from clazzify.cli.main import main, run_command

__all__ = ["main", "run_command"]
