"""Bad arguments and missing paths are reported before torch, timm, onnxruntime or scikit-learn is imported: in a
fresh interpreter, the CLI stops with one line and none of those modules was ever loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.cli.preflight import BACKBONE_NAMES, hoist_global_flags

HEAVY = ("torch", "timm", "onnxruntime", "sklearn")
SRC = str(Path(__file__).resolve().parents[1] / "src")
# Calls the CLI's entry point with the given arguments, then prints the heavy modules that were imported.
PROBE = """
import json, sys, time, traceback
started = time.perf_counter()
from transferlab.cli.app import main
args, watched = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["transferlab", *args]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
except Exception:  # --debug lets the error through with its traceback
    traceback.print_exc()
    code = 1
heavy = sorted({name.split(".")[0] for name in sys.modules} & watched)
print("HEAVY=" + ",".join(heavy))
print(f"SECONDS={time.perf_counter() - started}")
sys.exit(code)
"""


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, list[str], float]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
                            capture_output=True, text=True, env=env, timeout=60)
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith(("HEAVY=", "SECONDS=")))
    return result, [name for name in printed["HEAVY"].split(",") if name], float(printed["SECONDS"])


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """A folder that looks like a run from outside (model.json) but whose weights file is truncated."""
    run = tmp_path_factory.mktemp("fake-run")
    (run / "model.json").write_text(json.dumps({"format": "transferlab-model/1"}))
    header = json.dumps({"head.w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (run / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 7)  # 16 expected
    return run


def cases(tmp: Path, fake_run: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, expected text of the error)."""
    data = tmp / "data"
    (data / "a").mkdir(parents=True, exist_ok=True)
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    no_model = tmp / "no_model"
    no_model.mkdir(exist_ok=True)
    (no_model / "model.json").write_text("{}")
    return {
        "train on a missing folder": (["train", str(tmp / "nonexistent")], "data folder not found"),
        "train on a file": (["train", str(a_file)], "data must be a folder"),
        "compare on a missing folder": (["compare", str(tmp / "nonexistent")], "data folder not found"),
        "train --out onto a file": (["train", str(data), "--out", str(a_file)], "is a file, not a folder"),
        "compare --out onto a file": (["compare", str(data), "--out", str(a_file)], "is a file, not a folder"),
        "unknown backbone": (["train", str(data), "--backbone", "resnet5O"], "unknown backbone 'resnet5O'"),
        "unknown combined backbone": (["train", str(data), "--backbone", "efficientnet_lite0+nope"], "unknown backbone 'nope'"),
        "negative views": (["train", str(data), "--views", "-1"], "--views must be at least 1"),
        "zero epochs": (["train", str(data), "--epochs", "0"], "--epochs must be at least 1"),
        "bad budget": (["train", str(data), "--strategy", "auto", "--budget", "soon"], "invalid duration"),
        "unknown strategy": (["train", str(data), "--strategy", "magic"], "unknown strategy"),
        "compare unknown strategy": (["compare", str(data), "--strategies", "extract,magic"], "unknown strategy"),
        "missing weights file": (["train", str(data), "--weights", str(tmp / "w.safetensors")], "no such file"),
        "predict on a missing run": (["predict", str(tmp / "no_run"), str(a_file)], "does not exist"),
        "predict without model.safetensors": (["predict", str(no_model), str(a_file)], "has no model.safetensors"),
        "predict with a truncated model": (["predict", str(fake_run), str(a_file)], "damaged or truncated"),
        "predict --top-k 0": (["predict", str(fake_run), str(a_file), "--top-k", "0"], "--top-k must be at least 1"),
        "predict --top-k -3": (["predict", str(fake_run), str(a_file), "--top-k", "-3"], "--top-k must be at least 1"),
        "predict onnx without export": (["predict", str(no_model), str(a_file), "--model", "onnx"], "no exported model"),
        "predict onnx by the old option name": (["predict", str(no_model), str(a_file), "--runtime", "onnx"], "no exported model"),
        "serve --port 99999": (["serve", str(fake_run), "--port", "99999"], "--port must be between 1 and 65535"),
        "export without model": (["export", str(no_model)], "has no model.safetensors"),
        "evaluate on a missing folder": (["evaluate", str(no_model), str(tmp / "nonexistent")], "has no model.safetensors"),
        "summary of neither a run nor a backbone": (["summary", "efficientnet_lite9"], "neither a run folder nor a backbone"),
        "imagenet unknown backbone": (["imagenet", str(a_file), "--backbone", "nope"], "unknown backbone"),
        "embed on a missing folder": (["embed", str(tmp / "nonexistent")], "data folder not found"),
        "embed unknown backbone": (["embed", str(data), "--backbone", "nope"], "unknown backbone"),
        "train --image-size 8": (["train", str(data), "--image-size", "8"], "--image-size must be at least 32"),
        "train --layer with finetune": (["train", str(data), "--strategy", "finetune", "--layer", "-2"],
                                        "--layer cannot be combined with strategy 'finetune'"),
        "train --dropout 1": (["train", str(data), "--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    }


def test_every_bad_argument_is_one_line_before_any_heavy_import(tmp_path, fake_run):
    failures = []
    for name, (args, expected) in cases(tmp_path, fake_run).items():
        result, heavy, _ = run_cli(*args)
        if result.returncode != 2 or expected not in result.stderr or "Traceback" in result.stderr or heavy:
            failures.append(f"{name}: rc={result.returncode} heavy={heavy} stderr={result.stderr.strip()[:200]!r}")
    assert not failures, "\n".join(failures)


def test_train_on_a_missing_folder_fails_within_a_second(tmp_path):
    # The CLI's own time, from importing it to the error (the interpreter's start-up, ~0.05 s idle, is Python's);
    # best of three, as the machine running the tests may be busy for a moment. Idle, the whole command takes ~0.5 s.
    timings = []
    for _ in range(3):
        result, heavy, seconds = run_cli("train", str(tmp_path / "nonexistent"))
        assert result.returncode == 2 and "data folder not found" in result.stderr and heavy == []
        timings.append(seconds)
    assert min(timings) <= 1.0, f"took {timings} s"


def test_serve_on_a_busy_port_names_the_option_before_starting(fake_run, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result, heavy, _ = run_cli("serve", str(fake_run), "--port", str(port))
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr and "serving on" not in result.stderr and heavy == []


def test_global_flags_work_after_the_verb(tmp_path):
    result, heavy, _ = run_cli("train", str(tmp_path / "nonexistent"), "--debug")
    assert "Traceback" in result.stderr and "data folder not found" in result.stderr  # --debug honoured
    assert hoist_global_flags(["train", "data", "--json", "-q"]) == ["--json", "-q", "train", "data"]
    assert hoist_global_flags(["predict", "run", "--", "--json"]) == ["predict", "run", "--", "--json"]


def test_json_flag_after_the_verb_gives_json(tmp_path):
    result, heavy, _ = run_cli("backbones", "--json")
    assert result.returncode == 0
    rows = json.loads(result.stdout[: result.stdout.rindex("HEAVY=")])  # the probe prints after the CLI
    assert {row["name"] for row in rows} >= {"efficientnet_lite0", "vgg16"}


def test_preflight_backbone_names_match_the_registry():
    from transferlab.backbones.registry import list_specs

    assert set(BACKBONE_NAMES) == {spec.name for spec in list_specs()}
