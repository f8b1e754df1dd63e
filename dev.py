#!/usr/bin/env python3
"""Set up the project's virtual environment (when needed) and run a project command in it.

    python3 dev.py run         the main job: an example spec, end to end through Airflow
    python3 dev.py test        the test suite (what CI runs); installs Debian's chromium for the
                               browser tests when it is missing (as root, with apt-get)
    python3 dev.py lock        re-resolve requirements.lock after changing pyproject.toml

The environment is `.venv/`, installed exactly from `requirements.lock` by uv (itself pinned and
installed from PyPI with pip). A stamp of the lock and pyproject.toml makes a second run instant.
Uses only the standard library, so it runs on a machine with nothing but python3 >= 3.11.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".flexflow-stamp"
UV_VERSION = "0.13.8"
PYTHON_VERSION = "3.11"
#: Debian packages the deployment suite's browser tests drive (Playwright on Debian's Chromium: no
#: browser is downloaded at test time), by the file each one provides.
DEBIAN_PACKAGES = {"/usr/bin/chromium": "chromium", "/usr/share/fonts/truetype/liberation": "fonts-liberation"}


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (LOCK, ROOT / "pyproject.toml", Path(__file__)):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _run(*command: str | Path) -> None:
    subprocess.run([str(c) for c in command], check=True, cwd=ROOT)


def _uv() -> Path:
    uv = BIN / "uv"
    if not uv.exists():
        _run(PYTHON, "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}")
    return uv


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"flexflow needs Python >= 3.11 (httpx2 does); this is {sys.version.split()[0]}")
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        shutil.rmtree(VENV, ignore_errors=True)
        _run(sys.executable, "-m", "venv", VENV)
    print("installing requirements.lock into .venv ...", flush=True)
    uv = _uv()
    _run(uv, "pip", "sync", "--quiet", "--python", PYTHON, LOCK)
    _run(uv, "pip", "install", "--quiet", "--python", PYTHON, "--no-deps", "-e", ".")
    STAMP.write_text(fingerprint)


def ensure_debian_packages() -> None:
    """Install the missing DEBIAN_PACKAGES with apt-get where this is Debian and we are root.

    Elsewhere (or when apt-get fails) say so and go on: the browser tests then skip, saying why.
    """
    missing = [package for path, package in DEBIAN_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(f"note: {' '.join(missing)} missing and apt-get not usable as this user; browser tests will skip")
        return
    print(f"installing Debian packages: {' '.join(missing)} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for command in (["apt-get", "update", "-qq"], install):
        if subprocess.run(command, cwd=ROOT, env=env, check=False).returncode != 0:
            print(f"note: `{' '.join(command)}` failed; browser tests will skip", flush=True)
            return


def lock() -> None:
    ensure_venv_python_only()
    _run(
        _uv(),
        "pip",
        "compile",
        "--quiet",
        "--universal",
        "--python-version",
        PYTHON_VERSION,
        "--extra",
        "dev",
        "--extra",
        "s3",
        "--extra",
        "deploy",
        "--output-file",
        LOCK,
        "pyproject.toml",
    )


def ensure_venv_python_only() -> None:
    if not PYTHON.exists():
        _run(sys.executable, "-m", "venv", VENV)


COMMANDS = {
    "run": ["-m", "flexflow.cli", "run", "specs/spring_social_refresh.yaml"],
    "test": ["-m", "pytest"],
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*COMMANDS, "lock"):
        print(__doc__)
        return 2
    if argv[0] == "lock":
        lock()
        return 0
    ensure_venv()
    if argv[0] == "test":
        ensure_debian_packages()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.call([str(PYTHON), *COMMANDS[argv[0]], *argv[1:]], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
