"""Every benchmark in turn; each one's markdown goes to stdout and to bench/results/<name>.md.

    .venv/bin/python bench/run_all.py [--quick]

--quick runs only the short ones (extraction throughput, warm reruns). The long ones (cold Caltech-101/97
runs of every strategy, the export comparison) take about 40 minutes on a 2-core CPU. Numbers worth keeping
are copied by hand into docs/benchmarks.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = {
    "extraction": ["extraction.py", "--n", "512"],
    "warm_run": ["warm_run.py", "--repeats", "5"],
}
LONG = {
    "caltech_extract": ["caltech.py", "--strategy", "extract"],
    "caltech_augment": ["caltech.py", "--strategy", "augment", "--no-warm"],
    "caltech_finetune": ["caltech.py", "--strategy", "finetune", "--no-warm"],
    "caltech_scratch": ["caltech.py", "--strategy", "scratch", "--no-warm"],
    "export": ["export.py"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the short benchmarks")
    args = parser.parse_args()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    failed = []
    for name, command in {**QUICK, **({} if args.quick else LONG)}.items():
        print(f"\n## {name}\n", flush=True)
        done = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]], capture_output=True, text=True)
        print(done.stdout, flush=True)
        (results / f"{name}.md").write_text(done.stdout)
        if done.returncode != 0:
            failed.append(name)
            print(done.stderr[-2000:], file=sys.stderr)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
