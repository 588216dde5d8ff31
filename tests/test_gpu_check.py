"""benchmarks/gpu_check.sh, the prepared check for a CUDA machine, in its dry run: no GPU,
no install; it checks the wheel list, builds the tiny teacher, validates the params with
the overrides and prints the commands a real run executes (seconds)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def environment(tmp_path: Path) -> dict:
    """This interpreter first on PATH (the script runs `python3`), temp files in tmp_path."""
    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("PYTHON", None)
    return env


def test_dry_run_builds_the_teacher_and_prints_the_pipeline_and_benchmark(tmp_path):
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run", "--wheels",
         str(tmp_path / "wheels")],
        cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "wheels folder" in out and "not here (fine for a dry run)" in out
    assert "M parameters, 8 layers" in out  # the teacher was built and loaded
    assert "params params/smoke.yaml with 3 overrides: valid" in out
    pipeline = next(line for line in out.splitlines() if " -m distill.cli run " in line)
    assert "run params/smoke.yaml --set run.teacher=" in pipeline
    assert "--set run.precision=bf16" in pipeline and "--set run.output_dir=" in pipeline
    benchmark = next(line for line in out.splitlines() if "gpu_check.py benchmark" in line)
    assert "--batch-size 32" in benchmark
    assert "gpu_check.py summary" in out
    assert list(tmp_path.glob("gpu_check.*")) == []  # the work folder is removed


def test_wheel_list_check_names_an_unneeded_and_a_missing_package(tmp_path):
    listed = (BENCHMARKS / "gpu_check_wheels.txt").read_text()
    assert "\npapermill\n" in listed
    bad = tmp_path / "wheels.txt"
    bad.write_text(listed.replace("\npapermill\n", "\nflask\n"))
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "check-wheels", "--list", str(bad),
         "--wheels", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "flask: listed, but distill does not need it" in result.stderr
    assert "papermill: distill needs it (a dependency in pyproject.toml)" in result.stderr
