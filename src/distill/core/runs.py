"""The run folder: its layout, atomic writes, and the manifest.

This module is the one place that knows where each artifact lives::

    outputs/<run>/
      params.yaml  manifest.json  01_teacher_sampling.ipynb ...   (pipeline)
      samples/part-00000.parquet ...  sampling_stats.json         (01)
      api_requests.csv  api_health.json   (01, openai backend)
      student_init/  student/  checkpoints/  train_log.csv        (02)
      training_job.json   (02, training under accelerate launch)
      metrics.json  figures/*.png                                 (03)

The notebooks find the run folder with `notebook_run_dir`, and `metrics.json`
is written and read here only (`write_metrics`, `read_metrics`).

Every write goes to a temporary sibling first and is renamed into place, so a
killed run never leaves a half-written artifact behind; a re-run resumes from
what finished.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

SAMPLES = "samples"
STUDENT_INIT = "student_init"
STUDENT = "student"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.csv"
TRAINING_JOB = "training_job.json"  # what launched training processes read (02)
SAMPLING_STATS = "sampling_stats.json"
API_REQUESTS = "api_requests.csv"
API_HEALTH = "api_health.json"
TEACHER_FINGERPRINT = "teacher_fingerprint.json"  # an API teacher's (distill.teachers.fingerprint)
CODE_TASKS = "code_tasks.jsonl"  # the code tasks' hidden tests, for stage 03 (distill.coding)
CODE_RESULTS = "code_results.csv"  # one row per model, task and answer: how its code fared (03)
METRICS = "metrics.json"
FIGURES = "figures"
PARAMS = "params.yaml"
MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w"):
    """Open a temporary file beside `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# metrics.json, version 1:
#   {"schema_version": 1, "heldout_prompts": N,
#    "models": {model: {figure: value}},   quality and cost: the same on a re-run
#    "speed":  {model: {figure: value}}}   SPEED_FIGURES: they vary from run to run
METRICS_SCHEMA_VERSION = 1
SPEED_FIGURES = ("generation_tokens_per_second", "sandbox_seconds_per_answer", "real_time_factor",
                 "transcription_tokens_per_second", "seconds_per_clip", "speedup_vs_teacher")
# and the serving figures of evaluation.speed, named per batch size
SPEED_PREFIXES = ("decode_", "scoring_", "assisted_", "teacher_alone_")


def is_speed_figure(figure: str) -> bool:
    """A figure measured in time, which varies from run to run of the same params."""
    return figure in SPEED_FIGURES or figure.startswith(SPEED_PREFIXES)


def write_metrics(run_dir: str | Path, table, heldout_prompts: int,
                  uncertainty: dict | None = None) -> dict:
    """Write metrics.json from the evaluation's table (a DataFrame, one row per model,
    one column per figure); returns what was written. `uncertainty`
    (distill.evaluation.intervals.uncertainty) adds its keys: `intervals` ({model:
    {figure: [low, high]}}, kept for the table's quality figures), `interval_method`, and
    `paired` ({"a - b": {figure: difference, interval, p-value}})."""
    # a figure that does not apply (NaN) is written as null: JSON has no NaN
    rows = {model: {k: None if isinstance(v, float) and math.isnan(v) else v
                    for k, v in row.items()} for model, row in table.to_dict("index").items()}
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION, "heldout_prompts": heldout_prompts,
        "models": {model: {k: v for k, v in row.items() if not is_speed_figure(k)}
                   for model, row in rows.items()},
        "speed": {model: {k: v for k, v in row.items() if is_speed_figure(k)}
                  for model, row in rows.items()}}
    metrics.update(uncertainty or {})
    if "intervals" in metrics:  # quality figures only: speed has no items to resample
        metrics["intervals"] = {model: {k: bounds for k, bounds in metrics["intervals"].get(
            model, {}).items() if k in metrics["models"][model]} for model in rows}
    write_json(Path(run_dir) / METRICS, metrics)
    return metrics


def read_metrics(run_dir: str | Path) -> dict:
    """metrics.json of a run, checked against the schema this code reads."""
    metrics = read_json(Path(run_dir) / METRICS)
    if metrics is None:
        raise FileNotFoundError(f"{Path(run_dir) / METRICS}: no metrics; run 03_evaluation "
                                "first")
    if metrics.get("schema_version") != METRICS_SCHEMA_VERSION:
        raise ValueError(f"{Path(run_dir) / METRICS}: schema version "
                         f"{metrics.get('schema_version')}, this distill reads "
                         f"{METRICS_SCHEMA_VERSION}")
    return metrics


def notebook_run_dir(run_dir: str | Path | None, output_dir: str | Path, name: str) -> Path:
    """The run folder a notebook works in: `run_dir` when given (papermill always
    gives it), else outputs/<name>-notebook for a notebook run by hand. Created if
    missing, so stage 01 can start a run from JupyterLab."""
    folder = Path(run_dir or Path(output_dir) / f"{name}-notebook")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_json(path: str | Path, data) -> None:
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def save_figure(figure, run_dir: str | Path | None, name: str):
    """Write a matplotlib `figure` to <run_dir>/figures/<name>.png (atomically) and
    return it; with run_dir None it is only returned (a notebook shows it)."""
    if run_dir is not None:
        with atomic_file(Path(run_dir) / FIGURES / f"{name}.png", "wb") as handle:
            figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    return figure


def read_json(path: str | Path, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / f"{name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every artifact except checkpoints (large, transient) and the
    executed notebooks and manifest (they embed times, so never reproducible)."""
    hashes = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if (not path.is_file() or relative.parts[0] in (CHECKPOINTS, MANIFEST)
                or path.suffix == ".ipynb" or path.name.startswith(".")):
            continue
        hashes[str(relative)] = sha256(path)
    return hashes


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Code version, package versions and hardware, for the manifest."""
    import torch

    versions = {}
    for package in ("torch", "transformers", "accelerate", "evaluate", "papermill",
                    "pandas", "pyarrow", "numpy", "gguf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = _git("rev-parse", "HEAD")
    return {
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain")) if commit else None,
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def update_manifest(run_dir: Path, **fields) -> dict:
    """Merge `fields` into manifest.json (nested dicts merged one level deep)."""
    manifest = read_json(run_dir / MANIFEST, {})
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    write_json(run_dir / MANIFEST, manifest)
    return manifest
