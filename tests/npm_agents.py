"""The coding agents the suite runs headless, installed once each from the npm registry at a pinned version."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def npm_agent(package: str, version: str, binary: str, cache_name: str) -> Path:
    """The agent's binary, installed into a cache directory outside the repo; skips where npm is missing."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed, so {package} cannot be installed from the npm registry")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minerva-test"
    prefix = cache / f"{cache_name}-{version}"
    path = prefix / "node_modules" / ".bin" / binary
    if not path.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(prefix), f"{package}@{version}",
                        "--no-audit", "--no-fund", "--loglevel=error"], check=True, timeout=900)
    return path
