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
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from clazzify.core.errors import describe, one_line

__all__ = ["BAD_INPUT", "CleanError", "ClazzifyGroup", "as_clean_error", "main", "one_line", "run_command"]

#: Exit code of a bad input or configuration (click's own usage errors exit 2 too).
BAD_INPUT = 2
#: Set by ``clazzify -v`` for the commands it starts too (``retrain`` runs the pipeline).
VERBOSE_ENV = "CLAZZIFY_VERBOSE"


class CleanError(click.ClickException):
    """One ``Error: ...`` line on stderr, exit code 2."""

    exit_code = BAD_INPUT


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def as_clean_error(e: BaseException) -> click.ClickException | None:
    """``e`` as the one line the user sees, or ``None`` for a bug (its traceback stays).

    A :class:`click.ClickException` keeps its message; click's default exit code 1 becomes
    2, a code of its own (say, a failed gate's) stays. A click ``Abort`` or ``Exit`` is no
    error and passes through. Verbose, the traceback is printed first.
    """
    if isinstance(e, click.ClickException):
        if e.exit_code == 1:
            e.exit_code = BAD_INPUT
        return e
    message = describe(e)
    if message is None:
        return None
    if _verbose():
        traceback.print_exception(e, file=sys.stderr)
    return CleanError(message)


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


def run_command(command: click.Command, args: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a click command under the error contract; return its exit code.

    For entry points outside the ``clazzify`` group: ``sys.exit(run_command(cli))``.
    """
    try:
        # A command's return value is no exit code (click's standalone mode ignores it too);
        # ctx.exit(n) and sys.exit(n) still set one.
        command.main(args=list(args) if args is not None else None, prog_name=prog_name,
                     standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except Exception as e:
        clean = as_clean_error(e)
        if clean is None:
            raise
        clean.show()
        return clean.exit_code
    return 0


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
    logging.basicConfig(level=logging.DEBUG if _verbose() else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not _verbose():
        # pika logs each failed connection step as an ERROR with a traceback, then raises
        # the same failure, which is reported once (or retried and logged by the worker).
        logging.getLogger("pika").setLevel(logging.CRITICAL)
