"""Every shell and Python block of README.md and docs/*.md runs, in page order, in a scratch
copy of the checkout, or says with a marker why it cannot (``docblocks.SKIP_KINDS``).

The fast test checks what needs no run: every marker is valid and every block compiles
(``bash -n``, ``compile()``), so a cluster-only block still cannot rot into a syntax error.
The slow one runs the blocks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docblocks import Block, DocsError, Scratch, check_syntax, collect, pages, run_block, stop_servers

ROOT = Path(__file__).resolve().parents[2]

#: Blocks another branch fixes: (page, text in the block) -> the reason. The lead removes an
#: entry when that branch is merged; strict, so a fixed block left here turns the test red.
KNOWN_BROKEN = {
}


def _params() -> tuple[list, list[str]]:
    params, errors = [], []
    for page in pages(ROOT):
        try:
            blocks = collect(page)
        except DocsError as e:
            errors.append(str(e))
            continue
        for block in blocks:
            marks = [pytest.mark.xfail(strict=True, reason=reason)
                     for (name, text), reason in KNOWN_BROKEN.items()
                     if page.name == name and text in block.code]
            params.append(pytest.param(block, marks=marks, id=block.where))
    return params, errors


PARAMS, PAGE_ERRORS = _params()


@pytest.mark.docs
def test_every_page_collects():
    """A bad marker, or a command in a fence without a language, fails here (and its page's
    blocks are not collected until it is fixed)."""
    assert not PAGE_ERRORS, "\n".join(PAGE_ERRORS)


@pytest.mark.docs
@pytest.mark.parametrize("block", PARAMS)
def test_every_block_is_marked_and_compiles(block: Block):
    check_syntax(block)


@pytest.mark.slow
@pytest.mark.docs
@pytest.mark.parametrize("block", PARAMS)
def test_block_runs_as_written(block: Block, scratch: Scratch):
    stop_servers(scratch, keep_page=block.page.name)  # a page's servers serve its later blocks only
    if not block.runs:
        check_syntax(block)
        pytest.skip(f"{block.where} {block.directive.kind}: {block.directive.reason}")
    run_block(block, scratch)
