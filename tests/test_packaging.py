"""The install: what a user gets from the wheel (package data included), and Ray as an extra that --engine ray
names when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import transferlab
from conftest import write_colour_classes
from transferlab.cli.app import app
from transferlab.engines.local import bulk_predict
from transferlab.core.errors import TransferlabError

ROOT = Path(__file__).resolve().parents[1]
RAY_HINT = "pip install 'transferlab[ray]'"
runner = CliRunner()


@pytest.fixture
def without_ray(monkeypatch):
    """Ray as a core-only install sees it: `import ray` fails and find_spec("ray") is None (a None entry in
    sys.modules does both), whether or not this environment has the extra."""
    monkeypatch.setitem(sys.modules, "ray", None)


def test_engine_ray_without_the_extra_names_the_extra(colour_folder, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from transferlab.cli.app import main; "
            f"sys.argv[1:] = ['train', {str(colour_folder)!r}, '--out', {str(tmp_path / 'run')!r}, '--engine', 'ray']; "
            "main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "error: --engine ray needs Ray, which is not installed" in result.stderr
    assert f"hint: {RAY_HINT}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [
    ["train", "{data}", "--out", "{out}", "--engine", "ray"],
    ["compare", "{data}", "--strategies", "extract", "--out", "{out}", "--engine", "ray"],
    ["embed", "{data}", "--out", "{out}.parquet", "--engine", "ray"],
])
def test_every_ray_engine_command_names_the_extra_when_ray_is_missing(command, without_ray, colour_folder, tmp_path):
    args = [arg.format(data=colour_folder, out=tmp_path / "out") for arg in command]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, TransferlabError), result.output
    assert result.exception.hint == RAY_HINT
    assert not list(tmp_path.glob("out*"))


def test_bulk_predict_names_the_ray_extra_before_reading_the_run(without_ray, tmp_path):
    # `predict RUN IMAGES --engine ray --out FILE` calls this once preflight has accepted the run folder
    with pytest.raises(TransferlabError) as raised:
        bulk_predict("ray", tmp_path / "run", [], tmp_path / "predictions.parquet", top_k=1)
    assert raised.value.hint == RAY_HINT


def test_the_local_engine_does_not_need_ray(without_ray, colour_folder, tmp_path):
    result = runner.invoke(app, ["--quiet", "embed", str(colour_folder), "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f.parquet").is_file()


def run_python(args: list[str], site: Path, cwd: Path) -> str:
    """`python ARGS` seeing the installed wheel in `site` first (and never this checkout's src/ by PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel built from a copy of this checkout's sources, the folder it is installed in). A copy, so that
    setuptools' build/ and egg-info leftovers never land in the checkout, nor stale ones in the wheel."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("transferlab-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True)
    return wheel, root / "site"


@pytest.mark.integration
def test_the_wheel_installs_the_package_itself_not_a_link_to_the_source(wheel_site, tmp_path):
    _, site = wheel_site
    imported = Path(run_python(["-c", "import transferlab; print(transferlab.__file__)"], site, tmp_path).strip())
    assert imported.is_relative_to(site), imported


@pytest.mark.integration
def test_the_installed_command_prints_its_help_and_the_wheel_version(wheel_site, tmp_path):
    wheel, site = wheel_site
    assert "Usage" in run_python(["-m", "transferlab", "--help"], site, tmp_path)
    version = wheel.name.split("-")[1]  # the metadata version, which setuptools read from __version__
    assert version == transferlab.__version__
    assert run_python(["-m", "transferlab", "--version"], site, tmp_path).strip() == f"transferlab {version}"


@pytest.mark.integration
def test_a_run_trained_from_the_wheel_has_its_model_and_report(wheel_site, tmp_path):
    # report.html renders the packaged templates/*.j2: a wheel without its package data fails here
    _, site = wheel_site
    data = write_colour_classes(tmp_path / "data", 6)
    run_python(["-m", "transferlab", "--quiet", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"],
               site, tmp_path)
    for name in ("model.json", "model.safetensors", "report.html"):
        assert (tmp_path / "run" / name).is_file(), name
    assert (site / "transferlab" / "deploy" / "static" / "index.html").is_file()  # serve's page
