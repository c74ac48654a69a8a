"""The kserve.Model's pixel gate: decode memory has a ceiling whatever the concurrency."""

from __future__ import annotations

import threading
import time

import pytest

from clazzify.serving.model import PixelGate

pytestmark = pytest.mark.unit


def test_requests_decode_together_only_while_their_pixels_fit():
    gate = PixelGate(100)
    peak, order, lock = [0], [], threading.Lock()

    def request(name: str, pixels: int, hold_s: float, start_after_s: float) -> None:
        time.sleep(start_after_s)
        with gate.hold(pixels):
            with lock:
                peak[0] = max(peak[0], gate.in_use)
                order.append(f"{name}+")
            time.sleep(hold_s)
            with lock:
                order.append(f"{name}-")

    threads = [threading.Thread(target=request, args=args) for args in
               (("a", 60, 0.2, 0.0), ("b", 60, 0.0, 0.05), ("c", 40, 0.0, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] <= 100 and gate.in_use == 0
    assert order.index("b+") > order.index("a-")  # b (60) waited for a (60) to finish
    assert order.index("c+") < order.index("a-")  # c (40) fitted beside a


def test_a_request_never_waits_for_more_than_the_whole_gate():
    gate = PixelGate(100)
    with gate.hold(1_000):  # clamped: it runs alone instead of forever waiting
        assert gate.in_use == 100
    assert gate.in_use == 0
