"""requirements.lock (what `make install` and CI install, hashes checked) still satisfies
pyproject.toml: every dependency of the project and of its cpu and test extras is pinned
there at a version inside the declared range, with hashes, and every floor raised past a
published advisory holds. A pyproject edit without a lock refresh fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: The lock's target (docs/security.md, "Supply chain").
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.13", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython"}
#: Floors past published advisories (issue 20): package -> first safe version.
ADVISORY_FLOORS = {"starlette": "0.49.1", "python-multipart": "0.0.18", "orjson": "3.9.15",
                   "protobuf": "6.31.1"}


def lock() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes)."""
    text = (ROOT / "requirements.lock").read_text()
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (Version(m.group(2)), block.count("--hash=sha256:"))
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["cpu"], *extras["test"]]]


def test_every_declared_dependency_is_pinned_in_range_with_hashes():
    pinned = lock()
    assert len(pinned) > 100
    for req in declared():
        if req.marker and not req.marker.evaluate(ENVIRONMENT):
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not in requirements.lock: refresh it (docs/security.md)"
        version, hashes = pinned[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {req}: refresh it (docs/security.md)")
        assert hashes >= 1, f"{name} has no hash in requirements.lock"
    assert all(hashes >= 1 for _, hashes in pinned.values())


def test_floors_are_past_the_advisories():
    pinned = lock()
    by_name = {canonicalize_name(r.name): r for r in declared()}
    for name, safe in ADVISORY_FLOORS.items():
        req = by_name[canonicalize_name(name)]
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", ">", "==")]
        assert floors and min(floors) >= Version(safe), f"{req}: the floor must be >= {safe}"
        assert pinned[canonicalize_name(name)][0] >= Version(safe)
