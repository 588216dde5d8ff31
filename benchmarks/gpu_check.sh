#!/usr/bin/env bash
# gpu_check.sh: one prepared check of distill on a CUDA machine, offline, in a few minutes.
#
# What it does: (1) installs what distill needs from a folder of wheels (no index) and
# distill itself (`pip install -e .`), in a venv that sees the machine's own packages;
# (2) builds a tiny random-initialised Llama teacher (config, safetensors, a byte-level
# BPE trained on distill's shipped text, a ChatML template) in a temp folder; (3) runs the
# smoke pipeline on it with papermill, in bf16; (4) times training at batch 32 on the GPU
# (distill.training.train on the run's samples; also sampling with the teacher on the
# GPU); (5) prints one summary: GPU, stage times, tokens/s, peak GPU memory.
#
# Needs on the GPU machine: one NVIDIA GPU; a Python with pip and torch (CUDA),
# transformers, accelerate, pandas, pyarrow and seaborn installed; this checkout; and the
# wheels of benchmarks/gpu_check_wheels.txt in a folder (default ../wheels beside the
# checkout; --wheels DIR). No network.
#
# Preparing the wheels, on a machine with a package index and the same Python version
# and platform as the GPU machine (`python -V` there; the compiled ones, pyzmq, debugpy,
# aiohttp, xxhash, rpds-py, jiter..., are built per Python version):
#   pip wheel --no-deps -w ../wheels -r benchmarks/gpu_check_wheels.txt
# (`pip wheel` rather than `pip download`: rouge-score is published as an sdist only, and
# pip wheel builds it; the others arrive as downloaded wheels.) For another Python
# version, download the binary ones for it instead:
#   pip download --no-deps --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 -d ../wheels -r <the list without rouge-score>
#   pip wheel --no-deps -w ../wheels rouge-score
#
# Run, from the checkout (about 4 minutes on an H200-class GPU; it stops itself at
# --deadline seconds, 540 by default):
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--save DIR]
# e.g. with the wheels in a git-ignored folder of the checkout:
#   bash benchmarks/gpu_check.sh --wheels build/wheels --save /tmp/gpu_check_results
#   bash benchmarks/gpu_check.sh --dry-run     # no GPU, no install: checks and commands
# Options: --python PY (default python3), --work DIR (kept; default a temp folder, removed
# at the end), --save DIR (copy the run's manifest, logs, metrics, executed notebooks and
# the summary there), --no-venv (install into PY's own environment), --deadline SECONDS.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
WHEELS="$ROOT/../wheels"
PY="${PYTHON:-}"
WORK=""
SAVE=""
DRY=0
VENV=1
DEADLINE=540
BATCH=32
BENCH_STEPS=20

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu_check: error: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --python) PY="${2:?--python needs an interpreter}"; shift ;;
        --work) WORK="${2:?--work needs a folder}"; shift ;;
        --save) SAVE="${2:?--save needs a folder}"; shift ;;
        --no-venv) VENV=0 ;;
        --deadline) DEADLINE="${2:?--deadline needs seconds}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

cd "$ROOT"
if [[ -z "$PY" ]]; then
    PY=$(command -v python3 || command -v python || true)
    [[ -n "$PY" ]] || die "no python3 on PATH; pass --python PY"
fi
if parent=$(cd "$(dirname "$WHEELS")" 2>/dev/null && pwd); then
    WHEELS="$parent/$(basename "$WHEELS")"  # absolute: pip and the venv run elsewhere
fi
KEEP_WORK=1
if [[ -z "$WORK" ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    KEEP_WORK=0
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cleanup() { [[ $KEEP_WORK == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

# Offline everywhere: nothing may wait on a hub that cannot be reached.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
export DISTILL_CACHE="$WORK/cache" IPYTHONDIR="$WORK/ipython" MPLCONFIGDIR="$WORK/matplotlib"
export JUPYTER_RUNTIME_DIR="$WORK/jupyter-runtime"

START=$SECONDS
STEPS_FILE="$WORK/steps.tsv"
: > "$STEPS_FILE"
FAILED=0

# show CMD...: print a command as the shell would read it (<placeholders> as they are)
show() {
    local line="+" arg
    for arg in "$@"; do
        if [[ $arg == "<"*">" ]]; then line+=" $arg"; else line+=" $(printf '%q' "$arg")"; fi
    done
    echo "$line"
}
# step NAME CMD...: print the command, run it (not in a dry run) within what is left of
# the deadline, and record its time; returns the command's status.
step() {
    local name=$1; shift
    show "$@"
    [[ $DRY == 1 ]] && return 0
    local left=$((DEADLINE - (SECONDS - START))) began=$SECONDS status=0
    if (( left < 15 )); then
        echo "gpu_check: no time left for $name (--deadline $DEADLINE s)" >&2
        printf '%s\t0\tskipped: deadline\n' "$name" >> "$STEPS_FILE"
        return 124
    fi
    timeout -k 10 "$left" "$@" || status=$?
    local state="done"
    if (( status == 124 )); then
        state="failed (deadline: --deadline $DEADLINE s)"
    elif (( status != 0 )); then
        state="failed (exit $status)"
    fi
    printf '%s\t%s\t%s\n' "$name" "$((SECONDS - began))" "$state" >> "$STEPS_FILE"
    echo "   $name: $state in $((SECONDS - began)) s"
    return "$status"
}

TEACHER="$WORK/teacher"
OUTPUTS="$WORK/outputs"
VPY="$PY"
if [[ $VENV == 1 ]]; then VPY="$WORK/venv/bin/python"; fi
OVERRIDES=(--set "run.teacher=$TEACHER" --set run.precision=bf16
           --set "run.output_dir=$OUTPUTS")

echo "== gpu_check $([[ $DRY == 1 ]] && echo '(dry run) ')in $WORK; python $PY; wheels $WHEELS"

GPU_PROBE="import sys, torch
if not torch.cuda.is_available():
    sys.exit('gpu_check: torch %s sees no CUDA GPU' % torch.__version__)
print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA',
      torch.version.cuda, '| bf16', torch.cuda.is_bf16_supported())"
if [[ $DRY == 1 ]]; then
    echo "== dry run: the wheel list against pyproject.toml"
    show "$PY" benchmarks/gpu_check.py check-wheels --wheels "$WHEELS"
    "$PY" benchmarks/gpu_check.py check-wheels --wheels "$WHEELS" \
        || die "benchmarks/gpu_check_wheels.txt does not match what distill needs (above)"
fi
echo "== 0. the GPU"
show "$PY" -c "<torch sees a CUDA GPU: its name, CUDA version, bf16 support>"
if [[ $DRY == 0 ]]; then
    "$PY" -c "$GPU_PROBE" || die "no usable CUDA GPU (above)"
fi

echo "== 1. install from $WHEELS (no index)"
if [[ $VENV == 1 ]]; then
    # A venv of its own, which sees the machine's packages through a .pth file naming
    # PY's site-packages (--system-site-packages would not, where PY is itself a venv's),
    # and uses PY's pip, or one from ensurepip where PY has none.
    step venv "$PY" -m venv --without-pip "$WORK/venv" \
        || die "could not create a venv with $PY (try --no-venv)"
    step venv-sees-base "$PY" benchmarks/gpu_check.py see-packages "$VPY" \
        || die "the venv does not see $PY's packages (above; try --no-venv)"
    if [[ $DRY == 0 ]] && ! "$VPY" -m pip --version >/dev/null 2>&1; then
        step venv-pip "$VPY" -m ensurepip --default-pip \
            || die "no pip for $PY, and ensurepip failed (above)"
    fi
fi
show "$VPY" benchmarks/gpu_check.py need --wheels "$WHEELS"
NEED=""
if [[ $DRY == 0 ]]; then
    NEED=$("$VPY" benchmarks/gpu_check.py need --wheels "$WHEELS") \
        || die "cannot install offline (see the message above)"
fi
PIP_INSTALL=("$VPY" -m pip install --no-index --find-links "$WHEELS" --progress-bar off -q)
if [[ $DRY == 1 ]]; then
    show "${PIP_INSTALL[@]}" "<the packages that need printed>"
elif [[ -n "$NEED" ]]; then
    echo "installing: $NEED"
    # shellcheck disable=SC2086  # NEED: requirement strings without spaces, one per word
    if ! step pip-install "${PIP_INSTALL[@]}" $NEED 2> "$WORK/pip.log"; then
        cat "$WORK/pip.log" >&2
        missing=$(grep -oE 'No matching distribution found for [^ ]+' "$WORK/pip.log" \
            | awk '{print $NF}' | sort -u | tr '\n' ' ' || true)
        die "pip could not install offline${missing:+; missing wheel(s) in $WHEELS: $missing}"
    fi
fi
# distill itself, editable: its notebooks are found beside the package (pipeline.py),
# so a plain wheel of distill would not find them. setuptools for the build comes from
# the wheels folder; without one there, from the environment (--no-build-isolation).
EDITABLE=("${PIP_INSTALL[@]}" --no-deps -e .)
if ! compgen -G "$WHEELS/setuptools-*.whl" > /dev/null; then
    EDITABLE=("${PIP_INSTALL[@]}" --no-deps --no-build-isolation -e .)
fi
step pip-install-distill "${EDITABLE[@]}" || die "pip install -e . failed (above)"
step installed "$VPY" benchmarks/gpu_check.py installed || die "distill does not import"
# The notebooks' kernel: papermill asks for "python3"; this spec, first on JUPYTER_PATH,
# makes it this interpreter whatever other python3 kernels the machine has.
KERNEL="$WORK/jupyter/kernels/python3"
echo "+ write $KERNEL/kernel.json (argv: $VPY -m ipykernel_launcher -f {connection_file})"
echo "+ export JUPYTER_PATH=$WORK/jupyter\${JUPYTER_PATH:+:\$JUPYTER_PATH}"
mkdir -p "$KERNEL"
printf '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (gpu_check)", "language": "python"}\n' "$VPY" > "$KERNEL/kernel.json"
export JUPYTER_PATH="$WORK/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"

echo "== 2. the tiny teacher"
if [[ $DRY == 1 ]]; then  # built here too, exactly as the real run builds it
    show "$PY" benchmarks/gpu_check.py teacher "$TEACHER"
    "$PY" benchmarks/gpu_check.py teacher "$TEACHER" || die "building the teacher failed"
else
    step teacher "$VPY" benchmarks/gpu_check.py teacher "$TEACHER" \
        || die "building the teacher failed (above)"
fi

echo "== 3. the smoke pipeline on the GPU in bf16"
if [[ $DRY == 1 ]]; then
    show "$PY" benchmarks/gpu_check.py params params/smoke.yaml "${OVERRIDES[@]}"
    "$PY" benchmarks/gpu_check.py params params/smoke.yaml "${OVERRIDES[@]}" \
        || die "the params do not validate (above)"
else
    step params "$VPY" benchmarks/gpu_check.py params params/smoke.yaml "${OVERRIDES[@]}" \
        || die "the params do not validate (above)"
fi
step pipeline "$VPY" -m distill.cli run params/smoke.yaml "${OVERRIDES[@]}" || FAILED=1
RUN_DIR=""
if [[ $DRY == 0 ]]; then
    RUN_DIR=$(ls -td "$OUTPUTS"/*/ 2>/dev/null | head -n 1 || true)
    RUN_DIR=${RUN_DIR%/}
fi

echo "== 4. training throughput at batch $BATCH on the GPU"
BENCH=("$VPY" benchmarks/gpu_check.py benchmark --run-dir "${RUN_DIR:-<run folder>}"
       --teacher "$TEACHER" --batch-size "$BATCH" --steps "$BENCH_STEPS"
       --json "$WORK/benchmark.json")
if [[ $DRY == 1 ]] || compgen -G "$RUN_DIR/samples/part-*.parquet" > /dev/null; then
    step benchmark "${BENCH[@]}" || FAILED=1
else
    echo "gpu_check: no samples in ${RUN_DIR:-$OUTPUTS}: the benchmark needs stage 01's" >&2
    FAILED=1
fi

echo "== 5. summary"
SUMMARY=("$VPY" benchmarks/gpu_check.py summary --run-dir "${RUN_DIR:-<run folder>}"
         --benchmark "$WORK/benchmark.json" --teacher "$TEACHER"
         --steps-file "$STEPS_FILE" --json "$WORK/summary.json")
show "${SUMMARY[@]}"
if [[ $DRY == 0 ]]; then
    "${SUMMARY[@]}" || FAILED=1
    echo "script total: $((SECONDS - START)) s"
    if [[ -n "$SAVE" ]]; then
        mkdir -p "$SAVE"
        cp "$WORK"/*.json "$STEPS_FILE" "$SAVE"/ 2>/dev/null || true
        [[ -f "$WORK/pip.log" ]] && cp "$WORK/pip.log" "$SAVE"/
        if [[ -n "$RUN_DIR" ]]; then
            (cd "$RUN_DIR" && cp -r -- *.json *.yaml *.csv *.ipynb figures "$SAVE"/ \
                2>/dev/null) || true
        fi
        echo "saved to $SAVE"
    fi
else
    echo "dry run: every check passed; the commands above are those a real run executes"
fi
exit "$FAILED"
