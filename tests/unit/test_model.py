"""The kserve.Model's pixel gate: decode memory has a ceiling whatever the concurrency."""

from __future__ import annotations

import asyncio

import pytest

from clazzify.serving.model import PixelGate

pytestmark = pytest.mark.unit


def test_requests_decode_together_only_while_their_pixels_fit():
    async def run():
        gate = PixelGate(100)
        peak, order = 0, []

        async def request(name: str, pixels: int, hold_s: float) -> None:
            nonlocal peak
            async with gate.hold(pixels):
                peak = max(peak, gate.in_use)
                order.append(f"{name}+")
                await asyncio.sleep(hold_s)
                order.append(f"{name}-")

        await asyncio.gather(request("a", 60, 0.05), request("b", 60, 0.0),
                             request("c", 40, 0.0))
        return peak, order, gate.in_use

    peak, order, left = asyncio.run(run())
    assert peak <= 100 and left == 0
    assert order.index("b+") > order.index("a-")  # b (60) waited for a (60) to finish
    assert order.index("c+") < order.index("a-")  # c (40) fitted beside a


def test_a_request_never_waits_for_more_than_the_whole_gate():
    async def run():
        gate = PixelGate(100)
        async with gate.hold(1_000):  # clamped: it runs alone instead of forever waiting
            return gate.in_use

    assert asyncio.run(run()) == 100
