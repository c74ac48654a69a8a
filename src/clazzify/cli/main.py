"""The ``clazzify`` command: every pipeline step, runnable by hand."""

from __future__ import annotations

import logging

import click


def fail(e: Exception) -> None:
    """Report ``e`` as one clean line on stderr (click's exit code 1)."""
    raise click.ClickException(str(e)) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="clazzify")
def main(verbose: bool) -> None:
    """clazzify: sort photos into content classes (food, ambiance, menu, human, ...).

    The training pipeline runs with `python -m pipelines.train run --local --source DIR`;
    these subcommands run its steps one by one.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
