"""The code sandbox: what holds here, what each kind of misbehaving answer ends as, and
what a run costs; with --run, a finished code run's figures (pass@k, by task kind, how
the answers ended, time per task).

    python benchmarks/code_sandbox.py [--workers 2] [--baseline REV] [--run outputs/<code run>]

Every built-in task's reference solution is run in the sandbox too (all must pass): the
seconds per answer printed are of those 160 runs, one worker and `--workers`. With
`--baseline REV` (a git revision, e.g. a661114, before issue 26) the same costs are first
measured with that revision's src/ (extracted to a temporary folder), on this machine in
the same call, so before and after compare. The full list of attacks and their outcomes:
`python tests/test_sandbox_attacks.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from distill.coding import judge, sandbox, tasks
from distill.lm import data

ROOT = Path(__file__).resolve().parents[1]

TASK = {"prompt": "def add(a, b):\n", "entry_point": "add", "tests": "assert add(1, 2) == 3\n"}
MISBEHAVIOUR = {
    "loops forever": "while True:\n    pass\n",
    "allocates without bound": "hoard = []\nwhile True:\n    hoard.append(bytearray(10**7))\n",
    "fork-bombs": "import os\nwhile True:\n    os.fork()\n",
    "writes outside its folder": "open('/tmp/distill-escaped.txt', 'w').write('x')\n",
    "reads the API key": "import os\nassert 'OPENAI_API_KEY' not in os.environ, 'key seen'\n"
                         "def add(a, b):\n    return a + b\n",
    "opens a socket": "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
    "reads /etc/passwd": "print(open('/etc/passwd').read())\n",
    "fills its folder": "for i in range(12):\n    open(f'big{i}', 'wb').write(b'x' * 15 * 2**20)\n",
    "equals anything": "class A:\n    def __eq__(self, other):\n        return True\n"
                       "def add(a, b):\n    return A()\n",
    "behaves": "def add(a, b):\n    return a + b\n",
}


def sandbox_figures(workers: int) -> None:
    from distill.coding import probe  # here: --baseline runs `cost` with a src/ that has none

    limits = sandbox.Limits()
    print(f"uid {os.geteuid()}; limits {limits}")
    print(probe.describe(probe.mechanisms(limits)), "\n")
    os.environ["OPENAI_API_KEY"] = "sk-benchmark"  # the sandbox must not pass it on
    outcomes = tasks.run_answers(list(MISBEHAVIOUR.values()), [TASK] * len(MISBEHAVIOUR),
                                 limits, workers, desc="misbehaviour")
    print(pd.DataFrame({"answer": list(MISBEHAVIOUR), "ended as": [o.kind for o in outcomes],
                        "seconds": [round(o.seconds, 2) for o in outcomes],
                        "detail": [o.detail[:60] for o in outcomes]}).to_string(index=False))
    print("escaped file exists:", Path("/tmp/distill-escaped.txt").exists(), "\n")


def cost(workers: int, label: str) -> None:
    """Seconds per answer for the 160 reference solutions, one worker and `workers`."""
    limits = sandbox.Limits()
    rows = [json.loads(line) for line in
            data.builtin_path("code_tasks.jsonl").read_text().splitlines()]
    for count in sorted({1, workers}):
        start = time.perf_counter()
        done = tasks.run_answers([r["canonical_solution"] for r in rows], rows, limits, count,
                                 desc=f"{label}: {count} worker(s)")
        wall = time.perf_counter() - start
        print(f"{label}: {len(rows)} reference solutions, {count} worker(s): "
              f"{sum(o.passed for o in done)} passed; {wall:.1f} s wall, "
              f"{wall / len(rows) * 1000:.0f} ms per answer; each run "
              f"{sum(o.seconds for o in done) / len(done) * 1000:.0f} ms", flush=True)


def baseline_cost(revision: str, workers: int) -> None:
    """`cost` with `revision`'s src/, in a subprocess of this same script."""
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": str(Path(folder) / "src")}
        subprocess.run([sys.executable, __file__, "--cost-only", "--label",
                        f"before ({revision})", "--workers", str(workers)], env=env, check=True)


def run_figures(run_dir: Path) -> None:
    results = pd.read_csv(run_dir / "code_results.csv")
    print(f"\n{run_dir}: {results['prompt_id'].nunique()} held-out tasks")
    print(judge.pass_rates(results).round(4).to_string(), "\n")
    print(judge.by_kind(results).round(3).to_string(), "\n")
    print(judge.failure_kinds(results).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run", type=Path, help="a finished run with code_results.csv")
    parser.add_argument("--baseline", help="a git revision whose sandbox to time first")
    parser.add_argument("--cost-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="now", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_only:  # also what --baseline runs with the old src/
        cost(args.workers, args.label)
        return
    sandbox_figures(args.workers)
    if args.baseline:
        baseline_cost(args.baseline, args.workers)
    cost(args.workers, "after" if args.baseline else "now")
    if args.run:
        run_figures(args.run)


if __name__ == "__main__":
    main()
