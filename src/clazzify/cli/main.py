"""The ``clazzify`` command: every pipeline step, runnable by hand.

It also holds the error contract every entry point shares (``clazzify``, ``python -m
pipelines.train``, ``python -m serving``, and so the make targets that call them): a bad
path, setting, URL, credential, database, port or unreachable service ends in one
``Error: ...`` line naming it and the fix, exit code 2; ``-v`` (or ``CLAZZIFY_VERBOSE=1``)
prints the traceback above that line.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from clazzify.core.errors import (
    BAD_INPUT,
    VERBOSE_ENV,
    CleanError,
    as_clean_error,
    one_line,
    run_command,
    verbose_errors,
)

__all__ = ["BAD_INPUT", "CleanError", "ClazzifyGroup", "as_clean_error", "main", "one_line", "run_command"]


class ClazzifyGroup(click.Group):
    """A group whose commands' failures are reported once, here: each command raises
    specific exceptions and no command needs its own ``try``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            clean = as_clean_error(e)
            if clean is None or clean is e:
                raise
            raise clean from e


@click.group(cls=ClazzifyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True,
              help="Log debug messages, and print the traceback above an error's one line.")
@click.version_option(package_name="clazzify")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """clazzify: sort photos into content classes (food, ambiance, menu, human, ...).

    The training pipeline runs with `python -m pipelines.train run --local --source DIR`;
    these subcommands run its steps one by one. A bad input, setting, URL, credential or
    unreachable service ends with one `Error: ...` line naming it and exit code 2 (`-v`
    prints the traceback too).
    """
    if verbose:
        before = os.environ.get(VERBOSE_ENV)
        os.environ[VERBOSE_ENV] = "1"
        ctx.call_on_close(lambda: os.environ.pop(VERBOSE_ENV) if before is None
                          else os.environ.__setitem__(VERBOSE_ENV, before))
    logging.basicConfig(level=logging.DEBUG if verbose_errors() else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose_errors():
        # pika logs each failed connection step as an ERROR with a traceback, then raises
        # the same failure, which is reported once (or retried and logged by the worker).
        logging.getLogger("pika").setLevel(logging.CRITICAL)
