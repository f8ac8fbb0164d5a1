"""The CLI's rough edges a new user hits: versions, narrow terminals, arguments that make no sense."""

from __future__ import annotations

from typer.testing import CliRunner

from transferlab import __version__
from transferlab.cli.app import app

runner = CliRunner()


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"transferlab {__version__}"


def test_backbone_names_are_never_truncated_in_a_narrow_terminal():
    result = runner.invoke(app, ["backbones"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "efficientnet_lite0" in result.output and "inception_resnet_v2" in result.output


def test_top_k_below_one_is_refused(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path), "--top-k", "0"])
    assert result.exit_code != 0 and "--top-k must be at least 1" in str(result.exception or result.output)


def test_negative_views_are_refused_before_any_image_is_read(colour_folder):
    from transferlab.core.errors import TransferlabError

    result = runner.invoke(app, ["train", str(colour_folder), "--strategy", "augment", "--views", "-1"])
    assert isinstance(result.exception, TransferlabError) and "views must be" in result.exception.message
