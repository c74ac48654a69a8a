"""The ``clazzify`` command: every pipeline step, runnable by hand."""

from __future__ import annotations

import logging
from typing import Any

import click

from clazzify.core.errors import ClazzifyError

#: Exit code of a bad input or configuration (click's own usage errors exit 2 too).
BAD_INPUT = 2


class CleanError(click.ClickException):
    """A :class:`ClazzifyError` shown as one ``Error: ...`` line on stderr, exit code 2."""

    exit_code = BAD_INPUT


def one_line(e: BaseException) -> str:
    """``e``'s message on one line (a traceback-free summary of multi-line messages)."""
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip()) or repr(e)


class ClazzifyGroup(click.Group):
    """A group whose commands may raise :class:`ClazzifyError`: it is reported once, here,
    as one clean line and exit code 2, so no command needs its own ``try``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClazzifyError as e:
            raise CleanError(one_line(e)) from e


@click.group(cls=ClazzifyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="clazzify")
def main(verbose: bool) -> None:
    """clazzify: sort photos into content classes (food, ambiance, menu, human, ...).

    The training pipeline runs with `python -m pipelines.train run --local --source DIR`;
    these subcommands run its steps one by one. A bad input or setting ends with one
    `Error: ...` line naming it and exit code 2.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
