"""Training in child processes: `accelerate launch -m distill.training RUN_DIR`.

With `student_training.processes` > 1 or an `accelerate_config`, notebook 02 does
not train in its own kernel. It writes the job (the student_training params with
the precision already chosen, the seed and the teacher) to `training_job.json` in
the run folder and calls `launch`, which starts the processes, shows their progress
and reads the log back. Each child (`main`) reads only the run folder: the samples,
`student_init/` (written by the notebook) and the job, trains with `loop.train`,
and the main process saves `student/`. So the notebook and `distill run` stay the
entry points, and the same job can be launched by hand on a cluster:

    accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml \\
        -m distill.training outputs/<run>

On CPU the processes talk over gloo and split the cores between them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from ..core.params import StudentTrainingParams
from ..core.precision import FORMATS, autocast_mode
from ..core.runs import SAMPLES, STUDENT, STUDENT_INIT, TRAIN_LOG, TRAINING_JOB, write_json

# prefixes of the lines a child prints for the parent: progress for its bar, and the
# error that stopped it (torchrun's own report of a failure names no cause)
PROGRESS, ERROR = "distill-progress ", "distill-error "


class TrainingFailed(RuntimeError):
    """The launched training processes exited with an error."""


def transfer_set(run_dir: Path, config: StudentTrainingParams, seed: int, tokenizer=None):
    """(training examples, validation slices) from the run folder's samples: the same
    in the notebook and in every child process. The 'val' slice is split off the
    training samples (seeded); 'prose' is the teacher-scored validation prose. Stage
    03's held-out prompts and prose stay unseen. `tokenizer`: the student's, where the
    samples must be re-read in its tokens (another tokenizer than the teacher's, or a
    cross-tokenizer objective; see distill.lm.cross_tokenizer); None reads the teacher's."""
    from ..core.params import SOURCES
    from ..lm.cross_tokenizer import cross_examples
    from ..lm.samples import build_examples, read_samples
    from ..lm.validation import split_validation

    samples = read_samples(run_dir, split="train", sources=SOURCES)
    if tokenizer is not None:
        stats = {}
        examples = cross_examples(samples, tokenizer, config.cross_objective, stats)
        print(f"re-read in the student's tokens: {stats['examples']} chat samples (left "
              f"out: {stats['skipped']}); teacher tokens in one-to-one spans "
              f"{stats['coverage']['one_to_one']:.3f}, longer spans "
              f"{stats['coverage']['multi_token']:.3f}, unaligned "
              f"{stats['coverage']['unaligned']:.3f}")
    else:  # offline token-level KD reads the cached top-k; text-only samples lack it
        examples = build_examples(samples, need_topk=config.needs_topk)
    slices = {}
    if config.validation_size:
        examples, slices["val"] = split_validation(examples, config.validation_size, seed)
        prose = read_samples(run_dir, sources=("validation",))
        if len(prose) and tokenizer is None:  # the prose is in the teacher's tokens only
            slices["prose"] = build_examples(prose, need_topk=True)
    return examples, slices


def write_job(run_dir: Path, config: StudentTrainingParams, seed: int, teacher: str, *,
              precision: str, student_tokens: bool = False) -> Path:
    """The job the child processes run. `precision` is the run's recorded choice
    (fp32, bf16 or fp16), so no child probes the CPU again. `student_tokens`: the
    samples are re-read in the student's tokens (see `transfer_set`)."""
    if precision not in FORMATS:
        raise ValueError(f"precision: expected one of {', '.join(FORMATS)} (the run's "
                         f"recorded choice, distill.core.precision.for_run), got {precision!r}")
    path = Path(run_dir) / TRAINING_JOB
    write_json(path, {"student_training": dataclasses.asdict(config), "seed": seed,
                      "teacher": teacher, "student_tokens": student_tokens,
                      "precision": precision})
    return path


def launch_command(run_dir: Path, config: StudentTrainingParams, port: int | None = None
                   ) -> list[str]:
    """The `accelerate launch` command line of the job in `run_dir`."""
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
               "--num_processes", str(config.processes), "--dynamo_backend", "no",
               "--mixed_precision", "no"]  # the job's precision wins over the launcher's
    if config.accelerate_config:
        path = Path(config.accelerate_config).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"student_training.accelerate_config: {path} is not a file;"
                                    " give an accelerate config (configs/accelerate/ holds some)"
                                    " or null")
        command += ["--config_file", str(path)]
    elif config.processes > 1:
        # accelerate starts several local processes through torchrun only on this path;
        # on a machine without GPUs each child then finds the CPU and uses gloo
        command += ["--multi_gpu", "--num_machines", "1"]
    if port is not None:
        command += ["--main_process_port", str(port)]
    return command + ["-m", "distill.training", str(Path(run_dir).resolve())]


def launch(run_dir: Path, config: StudentTrainingParams, *, seed: int, teacher: str,
           precision: str, port: int | None = None, student_tokens: bool = False):
    """Train under `accelerate launch` with `config.processes` processes and return the
    log (a DataFrame). Progress shows as one bar; the children's other lines pass
    through. On failure raises TrainingFailed with their last lines; the checkpoints
    stay, so launching again resumes. `student_tokens`: see `write_job`."""
    import pandas as pd
    from tqdm.auto import tqdm

    write_job(run_dir, config, seed, teacher, precision=precision,
              student_tokens=student_tokens)
    command = launch_command(run_dir, config, port)
    environment = dict(os.environ)
    # the mixed precision comes from the job (the run's choice), not from the launcher
    environment.pop("ACCELERATE_MIXED_PRECISION", None)
    if "OMP_NUM_THREADS" not in environment:  # torchrun would give each process one
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        environment["OMP_NUM_THREADS"] = str(max(1, cores // config.processes))
    tail, errors, bar = deque(maxlen=20), [], None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=environment, bufsize=1) as child:
        for line in child.stdout:
            if line.startswith(PROGRESS):
                row = json.loads(line[len(PROGRESS):])
                if bar is None:
                    bar = tqdm(total=row["total_steps"], initial=row["step"] - 1,
                               desc=f"training ({config.processes} processes)", unit="step")
                bar.update(row["step"] - bar.n)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                continue
            if line.startswith(ERROR):
                errors.append(line[len(ERROR):])
            tail.append(line)
            print(line, end="", flush=True)
    if bar is not None:
        bar.close()
    if child.returncode != 0:
        raise TrainingFailed(
            f"training under accelerate launch ({config.processes} processes) exited with "
            f"code {child.returncode}:\n{''.join(errors) or ''.join(tail)}The command was: "
            f"{' '.join(command)}\nCheckpoints in {run_dir} are kept: run again to resume.")
    return pd.read_csv(Path(run_dir) / TRAIN_LOG)


def main(argv: list[str] | None = None) -> None:
    """One child process: read the job in RUN_DIR, train, and (main process) save the
    student."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distill.training",
                                     description="Run a run folder's training job (written "
                                     "by notebook 02), usually under accelerate launch.")
    parser.add_argument("run_dir", type=Path)
    run_dir = parser.parse_args(argv).run_dir
    try:
        _run_job(run_dir)
    except BaseException as error:  # SystemExit too: the parent shows why
        for line in f"{type(error).__name__}: {error}".splitlines():
            print(f"{ERROR}process {os.environ.get('RANK', 0)}: {line}", flush=True)
        raise


def _run_job(run_dir: Path) -> None:
    import torch
    from transformers.utils import logging as transformers_logging

    from ..lm.models import load_model
    from .loop import train

    transformers_logging.disable_progress_bar()  # one bar per process would bury the parent's

    path = run_dir / TRAINING_JOB
    if not path.is_file():
        raise SystemExit(f"{path}: no training job; notebook 02 writes it when "
                         "student_training.processes > 1 or accelerate_config is set")
    if not (run_dir / STUDENT_INIT).is_dir() or not (run_dir / SAMPLES).is_dir():
        raise SystemExit(f"{run_dir}: needs {SAMPLES}/ and {STUDENT_INIT}/ (stage 01, and "
                         "notebook 02 up to its Training section)")
    job = json.loads(path.read_text())
    config = StudentTrainingParams(**job["student_training"])
    rank = int(os.environ.get("RANK", 0))
    if rank == 0:
        print(f"{os.environ.get('WORLD_SIZE', 1)} processes, {torch.get_num_threads()} threads "
              f"each; training autocast "
              f"{autocast_mode(job['precision'], config.mixed_precision)}",
              flush=True)
    # on the CPU: `prepare` moves each process's copy to its own device (GPU i)
    student, tokenizer = load_model(str(run_dir / STUDENT_INIT), device="cpu")
    teacher = load_model(job["teacher"], device="cpu")[0] if config.needs_teacher else None
    examples, validation = transfer_set(run_dir, config, job["seed"],
                                        tokenizer if job.get("student_tokens") else None)

    def report(row: dict, total_steps: int) -> None:
        print(PROGRESS + json.dumps({"step": row["step"], "total_steps": total_steps,
                                     "loss": row["loss"]}), flush=True)

    train(student, examples, run_dir, config, seed=job["seed"], teacher=teacher,
          tokenizer=tokenizer, validation=validation, on_step=report, save_to=run_dir / STUDENT,
          precision=job["precision"])
