"""The alias watcher's decisions, with plain functions for the registry and the swap."""

from __future__ import annotations

import pytest

from clazzify.core.errors import ConfigError, DataError
from clazzify.serving.engine import AliasWatcher

pytestmark = pytest.mark.unit


class Registry:
    def __init__(self) -> None:
        self.alias = "1"
        self.serving = "1"
        self.broken: set[str] = set()
        self.loads: list[str] = []
        self.down = False

    def resolve(self) -> str:
        if self.down:
            raise ConfigError("tracking server unreachable")
        return self.alias

    def swap(self, version: str) -> None:
        self.loads.append(version)
        if version in self.broken:
            raise DataError(f"version {version} is not a clazzify bundle")
        self.serving = version


def _watcher(reg: Registry) -> AliasWatcher:
    return AliasWatcher("models:/m@champion", reg.resolve, 60.0, lambda: reg.serving, reg.swap)


def test_swaps_when_the_alias_moves_and_only_then():
    reg = Registry()
    watcher = _watcher(reg)
    watcher.tick()
    assert reg.loads == []
    reg.alias = "2"
    watcher.tick()
    watcher.tick()
    assert reg.loads == ["2"] and reg.serving == "2"


def test_a_broken_version_is_tried_a_few_times_then_left_alone():
    reg = Registry()
    reg.alias, reg.broken = "2", {"2"}
    watcher = _watcher(reg)
    for _ in range(10):
        watcher.tick()
    assert reg.loads == ["2"] * watcher.max_attempts and reg.serving == "1"
    reg.alias = "3"  # the alias moves on: the watcher follows
    watcher.tick()
    assert reg.serving == "3"


def test_an_unreachable_registry_keeps_the_current_model():
    reg = Registry()
    reg.down = True
    watcher = _watcher(reg)
    watcher.tick()
    assert reg.serving == "1" and reg.loads == []
    reg.down, reg.alias = False, "2"
    watcher.tick()
    assert reg.serving == "2"
