"""Installing freshrec claims only the name ``freshrec``: jobs/ and models/ install as
``freshrec.jobs`` and ``freshrec.models``, in a normal wheel and in the editable install."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import freshrec.jobs
import freshrec.models
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_editable_install_maps_jobs_and_models_into_freshrec():
    assert Path(freshrec.jobs.__file__).resolve().parent == REPO / "jobs"
    assert Path(freshrec.models.__file__).resolve().parent == REPO / "models"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, cwd=out)
    (path,) = out.glob("freshrec-*.whl")
    return path


def test_wheel_holds_only_the_freshrec_package(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert tops == {"freshrec"}
    for module in ("freshrec/jobs/clean.py", "freshrec/jobs/score.py", "freshrec/models/seqrec.py", "freshrec/airflow/runtime.py",
                   "freshrec/static/swagger-ui/swagger-ui-bundle.js", "freshrec/static/data_docs/manifest.json",
                   "freshrec/static/data_docs/fontawesome-free-6.6.0/webfonts/fa-solid-900.woff2"):
        assert module in names


def test_fresh_venv_outside_the_checkout_imports_freshrec_not_jobs(wheel: Path, tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, cwd=tmp_path)

    def imports(module: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True)

    assert imports("freshrec.jobs").returncode == 0
    assert imports("freshrec.models").returncode == 0
    for generic in ("jobs", "models"):
        failed = imports(generic)
        assert failed.returncode != 0 and "ModuleNotFoundError" in failed.stderr
