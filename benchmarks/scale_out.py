"""Training on one process vs several under `accelerate launch`, same job, same cores.

Takes a finished run folder (its samples/ and student_init/ and the student_training
params in its params.yaml), trains the same job in fresh copies through distill's
launcher with 1 and with N processes, and prints tokens/s, wall time (process start-up
included), peak memory per process and how far the two students are apart.

    python benchmarks/scale_out.py outputs/<run> [--processes 2] [--steps 24]
        [--precisions fp32,bf16]

On CPU each process gets cores / N threads. In float32 the students should agree to
float rounding (tests/test_scale_out.py asserts it on a tiny model); in bfloat16
autocast the per-process batch shapes change the rounding, so they agree less.
"""

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def train_copy(run_dir: Path, scratch: Path, config, label: str):
    from distill.core import runs
    from distill.testing import free_port
    from distill.training import launch

    folder = scratch / label
    folder.mkdir()
    os.symlink((run_dir / runs.SAMPLES).resolve(), folder / runs.SAMPLES)
    shutil.copytree(run_dir / runs.STUDENT_INIT, folder / runs.STUDENT_INIT)
    started = time.perf_counter()
    # the config's mixed_precision (set per row below) wins over the precision given here
    log = launch(folder, config, seed=0, teacher="unused", precision="fp32", port=free_port())
    return folder, log, time.perf_counter() - started


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for path in sorted((folder / "student").glob("*.safetensors")):
        found.update(load_file(path))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()

    from distill.core.params import StudentTrainingParams
    from distill.core.precision import autocast_mode

    section = yaml.safe_load((args.run_dir / "params.yaml").read_text())["student_training"]
    rows = []
    for precision in args.precisions.split(","):
        base = StudentTrainingParams(**section)
        # validation and checkpoints as the run had them; the step count is the benchmark's
        base = dataclasses.replace(base, max_steps=args.steps, warmup_steps=min(
            base.warmup_steps, args.steps), mixed_precision=autocast_mode(precision),
            accelerate_config=None)
        with tempfile.TemporaryDirectory() as scratch:
            results = {}
            for processes in (1, args.processes):
                config = dataclasses.replace(base, processes=processes)
                results[processes] = train_copy(args.run_dir, Path(scratch), config,
                                                f"{precision}-{processes}")
            (one, one_log, _), (many, many_log, _) = results[1], results[args.processes]
            first, last = weights(one), weights(many)
            weight_gap = max(float((first[n] - last[n]).abs().max()) for n in first)
            loss_gap = float(((one_log["loss"] - many_log["loss"]).abs()
                              / one_log["loss"]).max())
            for processes, (_, log, wall) in results.items():
                steady = log.iloc[1:]  # the first step warms up
                rows.append({
                    "precision": precision, "processes": processes, "steps": len(log),
                    "tokens/s": round(steady["tokens"].sum() / steady["seconds"].sum(), 1),
                    "wall s (with start-up)": round(wall, 1),
                    "peak MB per process": round(log["peak_memory_mb"].max()),
                    "max loss gap (rel)": f"{loss_gap:.1e}" if processes > 1 else "",
                    "max weight gap": f"{weight_gap:.1e}" if processes > 1 else ""})
            print(rows[-2], rows[-1], sep="\n", flush=True)
    import pandas as pd

    print(f"\n{args.run_dir}: {args.steps} steps, batch {section['batch_size']}, "
          f"{os.cpu_count()} cores")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
