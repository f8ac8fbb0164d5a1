"""The front door of the API: a dozen keywords, the rest in config records; one table of defaults and checks that the
API, the CLI and config.json share; the keywords from before the groups kept for one release, with a warning."""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
from typing import Optional

import pytest
import typer

import transferlab
from transferlab.api import train as api_train
from transferlab.cli.app import app
from transferlab.core.config import FitConfig, TrainOptions
from transferlab.core.errors import TransferlabError
from transferlab.core.options import BY_KEYWORD, OPTIONS, TOP_LEVEL
from transferlab.core.settings import (
    RECORDS,
    EngineConfig,
    FinetuneConfig,
    HeadConfig,
    SplitConfig,
    TrunkConfig,
    train_settings,
)


def keyword_of(param) -> str:
    """The flat name of a command-line parameter, from its flag ("--out" -> out, "--end-to-end/--cached" ->
    end_to_end); an argument's own name."""
    return param.opts[0].lstrip("-").replace("-", "_")


def cli_drift(typer_app: typer.Typer, commands: tuple[str, ...]) -> list[str]:
    """The flags of `commands` whose default or help text differs from the table's."""
    found = []
    for name in commands:
        for param in typer.main.get_command(typer_app).commands[name].params:
            option = BY_KEYWORD.get(keyword_of(param))
            if option is None:
                continue
            if option.check(param.default) != option.default:
                found.append(f"{name} {option.flag}: default {param.default!r}, the table's {option.default!r}")
            if param.help != option.help:
                found.append(f"{name} {option.flag}: help {param.help!r}")
    return found


def test_cli_and_api_defaults_come_from_one_table():
    assert cli_drift(app, ("train", "compare")) == []
    offered = {keyword_of(param) for param in typer.main.get_command(app).commands["train"].params}
    assert [option.flag for option in OPTIONS.values() if option.cli and option.keyword not in offered] == []
    api = inspect.signature(api_train).parameters
    assert {name: api[name].default for name in TOP_LEVEL} == {name: OPTIONS[name].default for name in TOP_LEVEL}
    fields = {group: {f.name: f.default for f in dataclasses.fields(record)} for group, record in RECORDS.items()}
    assert {name: fields[o.group][o.field] for name, o in OPTIONS.items() if o.group} == {
        name: o.default for name, o in OPTIONS.items() if o.group}
    flat = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.name in BY_KEYWORD and f.name != "backbone"}
    assert {name: BY_KEYWORD[name].check(value) for name, value in flat.items()} == {
        name: BY_KEYWORD[name].default for name in flat}


def test_the_drift_check_finds_a_flag_whose_default_differs_from_the_table():
    drifting = typer.Typer()

    @drifting.command()
    def train(epochs: Optional[int] = typer.Option(5, help=OPTIONS["epochs"].help)):  # the table says None
        pass

    @drifting.command()
    def other():
        pass

    assert cli_drift(drifting, ("train",)) == ["train --epochs: default 5, the table's None"]


def test_old_keywords_still_work_and_warn_with_the_new_spelling(colour_folder, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transferlab.train(colour_folder, out=tmp_path / "run", epochs=2, quiet=True, batch_size=64, hidden=128,
                          views=2, runtime="onnx", include=["red", "blue"])
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)
                    and "transferlab.train(" in str(w.message)]
    assert sorted(str(w.message).split("write ")[1] for w in deprecations) == [
        "finetune={'views': 2}", "fit={'batch_size': 64}", "head={'hidden': 128}",
        "split={'include': ['red', 'blue']}", "trunk={'runtime': 'onnx'}",
    ]
    assert {w.filename for w in deprecations} == {__file__}  # pointed at the caller's line
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    options = config["options"]
    assert (options["fit"]["batch_size"], options["hidden"], options["views"], options["runtime"]) == (64, 128, 2, "onnx")
    assert config["include"] == ["blue", "red"]


def test_the_new_spelling_gives_the_same_settings_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = train_settings({"fit": {"batch_size": 64}, "head": {"hidden": 128}, "finetune": {"views": 2},
                              "trunk": {"runtime": "onnx"}, "split": {"include": ["red", "blue"]}})
    with pytest.warns(DeprecationWarning):
        old = train_settings({"batch_size": 64, "hidden": 128, "views": 2, "runtime": "onnx", "include": ["red", "blue"]})
    assert new == old


def test_each_group_takes_its_record_a_dict_or_a_plain_value_for_its_main_field():
    by_record = train_settings({"split": SplitConfig(fractions=(0.8, 0.1, 0.1)), "head": HeadConfig(kind="linear"),
                                "engine": EngineConfig(name="ray"), "trunk": TrunkConfig(layer=-2),
                                "finetune": FinetuneConfig(unfreeze="all"), "fit": FitConfig(optimizer="sgd")})
    by_dict = train_settings({"split": {"fractions": "0.8,0.1,0.1"}, "head": {"kind": "linear"},
                              "engine": {"name": "ray"}, "trunk": {"layer": -2}, "finetune": {"unfreeze": "all"},
                              "fit": {"optimizer": "sgd"}})
    by_value = train_settings({"split": (0.8, 0.1, 0.1), "head": "linear", "engine": "ray", "trunk": {"layer": -2},
                               "finetune": {"unfreeze": "all"}, "fit": {"optimizer": "sgd"}})
    assert by_record == by_dict == by_value
    assert by_value.split.fractions == (0.8, 0.1, 0.1) and by_value.head.kind == "linear"


def test_epochs_lr_and_seed_are_keywords_and_fit_settings_at_once():
    settings = train_settings({"epochs": 5, "lr": 3e-3, "seed": 2, "fit": FitConfig(batch_size=8)})
    assert (settings.fit.epochs, settings.fit.lr, settings.fit.seed, settings.fit.batch_size) == (5, 3e-3, 2, 8)
    with pytest.raises(TransferlabError, match="epochs is given twice, differently"):
        train_settings({"epochs": 5, "fit": {"epochs": 3}})
    with pytest.raises(TransferlabError, match="batch_size is given twice"), pytest.warns(DeprecationWarning):
        train_settings({"batch_size": 64, "fit": {"batch_size": 32}})


def test_strategy_defaults_fill_the_fit_settings_left_unset():
    assert FitConfig().resolved("extract") == FitConfig(epochs=50, batch_size=256, lr=1e-3)
    assert FitConfig(epochs=3).resolved("scratch", "lesson") == FitConfig(epochs=3, batch_size=128, lr=1e-3)


@pytest.mark.parametrize("keywords, message", [
    ({"finetune": {"views": 0}}, "views must be at least 1, got 0"),
    ({"head": {"dropout": 1.0}}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"fit": {"optimizer": "lbfgs"}}, "unknown optimizer 'lbfgs'"),
    ({"fit": {"batch_size": 2.5}}, "batch size must be a whole number, got 2.5"),
    ({"split": {"include": "red"}}, "classes must be a list of names"),
    ({"split": {"split_csv": "s.csv", "exclude": ["red"]}}, "exclude cannot be combined with it"),
    ({"trunk": {"precision": "int4"}}, "unknown precision 'int4'"),
    ({"engine": {"workers": 0}}, "workers must be at least 1"),
    ({"fit": {"epochs": 3}, "head": {"width": 5}}, "head= has no setting 'width'"),
    ({"epoch": 3}, "unknown keyword 'epoch'"),
    ({"budget": 60}, "budget applies to --strategy auto only"),
])
def test_bad_settings_are_one_line_errors_at_the_edge(keywords, message):
    with pytest.raises(TransferlabError, match=message):
        train_settings(keywords)


def test_an_unknown_keyword_suggests_the_one_meant():
    with pytest.raises(TransferlabError) as error:
        transferlab.train("anywhere", epoch=3)
    assert error.value.hint == "did you mean epochs?"


def test_a_budget_reads_like_people_write_it():
    assert train_settings({"strategy": "auto", "budget": "10m"}).budget == 600


@pytest.mark.parametrize("strategy", ["finetune", "scratch"])
def test_layer_is_refused_for_the_strategies_that_train_the_backbone(strategy, tmp_path):
    with pytest.raises(TransferlabError, match=f"--layer cannot be combined with strategy '{strategy}'"):
        transferlab.train(tmp_path / "not-read", strategy=strategy, trunk={"layer": -2}, quiet=True)
