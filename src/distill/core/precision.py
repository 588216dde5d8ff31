"""One precision for the whole run, chosen by measurement rather than assumed.

CPUs of the same kind differ: where the processor has native bfloat16 (AVX512-BF16,
AMX) bfloat16 matrix products run several times the float32 rate; where it has not,
they run 7 to 90 times *slower*. So `run.precision: auto` (the default) times both
at the model's own shapes, in about a second, and picks bf16 only where it is
at least `MIN_SPEEDUP` times faster; otherwise fp32. On a GPU, auto is bf16 where the
device supports it. An explicit fp32, bf16 or fp16 wins over the probe.

`distill run` probes once, in its own process, records the choice and the figures
in the manifest and hands the choice to every notebook, so the stages (and a
resumed run) agree without probing again.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .params import PRECISIONS
from .runs import MANIFEST, read_json, update_manifest

MIN_SPEEDUP = 1.5  # bf16 must beat fp32 by this much to be worth its rounding
# (rows, inner, columns) of the products a forward pass of the embedded teacher makes
# (width 576, MLP 1536): attention/MLP projections at decode (32 rows: one token of a
# batch of 32) and at training sizes (512 rows), and the LM head (vocabulary 49,152).
SHAPES = ((32, 576, 1536), (32, 1536, 576), (512, 576, 1536), (512, 1536, 576),
          (32, 576, 49152))


def _seconds_per_product(dtype: torch.dtype, shape, budget_s: float) -> float:
    """Seconds one product of `shape` takes: a warm-up, then repeats until `budget_s`."""
    rows, inner, columns = shape
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, columns, dtype=dtype)
    torch.mm(a, b)
    start, repeats = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < budget_s or repeats < 1:
        torch.mm(a, b)
        repeats += 1
    return elapsed / repeats


def probe(shapes=SHAPES, budget_s: float = 0.2) -> dict:
    """Time float32 and bfloat16 products at `shapes` on the CPU, the same products in
    both formats. Returns their GFLOP/s and the bf16 speed-up (fp32's time for the shapes
    both measured over bf16's). Where bf16 is emulated it runs up to 90 times slower:
    a product of the LM head's shape alone would take seconds, so bf16 stops before a shape
    that would overrun twice the budget at the rate seen so far (one shape at least; the
    verdict is plain by then)."""
    fp32 = [_seconds_per_product(torch.float32, s, budget_s / len(shapes)) for s in shapes]
    flops = [2.0 * rows * inner * columns for rows, inner, columns in shapes]
    bf16, start = [], time.perf_counter()
    for shape, work in zip(shapes, flops):
        if bf16:  # a warm-up and one product at the rate seen so far: over budget, stop
            expected_s = 2 * work * sum(bf16) / sum(flops[:len(bf16)])
            if time.perf_counter() - start + expected_s > 2 * budget_s:
                break
        bf16.append(_seconds_per_product(torch.bfloat16, shape, budget_s / len(shapes)))
    flops = flops[:len(bf16)]
    fp32_s, bf16_s = sum(fp32[:len(bf16)]), sum(bf16)
    return {"fp32_gflops": round(sum(flops) / fp32_s / 1e9, 2),
            "bf16_gflops": round(sum(flops) / bf16_s / 1e9, 2),
            "bf16_speedup": round(fp32_s / bf16_s, 3), "shapes_timed": len(bf16),
            "threads": torch.get_num_threads()}


def resolve(precision: str) -> tuple[str, dict]:
    """(fp32 | bf16 | fp16, why): `auto` decided by device and probe, others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"run.precision: must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    if precision != "auto":
        return precision, {"requested": precision}
    if torch.cuda.is_available():
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return choice, {"requested": "auto", "device": torch.cuda.get_device_name(0)}
    figures = probe()
    choice = "bf16" if figures["bf16_speedup"] >= MIN_SPEEDUP else "fp32"
    return choice, {"requested": "auto", "device": "cpu", "min_speedup": MIN_SPEEDUP,
                    **figures}


def describe(precision: str, why: dict) -> str:
    """One line for a notebook: the choice and what it rests on."""
    if "bf16_speedup" in why:
        return (f"precision {precision}: bf16 products ran {why['bf16_speedup']:.2f}x the "
                f"float32 rate here ({why['bf16_gflops']} vs {why['fp32_gflops']} GFLOP/s; "
                f"bf16 needs {why['min_speedup']}x)")
    if why.get("requested") == "auto":
        return f"precision {precision}: auto on {why.get('device')}"
    return f"precision {precision}: as set in params"


def for_run(run_dir: str | Path, requested: str) -> tuple[str, dict]:
    """The run's precision: the choice recorded in its manifest for this request, or a
    new one (`resolve`) that is then recorded. So the parent process probes once and
    every stage, and a resumed run, reuses its verdict."""
    recorded = (read_json(Path(run_dir) / MANIFEST, {}) or {}).get("precision")
    if recorded and recorded.get("requested", recorded.get("choice")) == requested:
        why = {k: v for k, v in recorded.items() if k != "choice"}
        return recorded["choice"], why
    choice, why = resolve(requested)
    update_manifest(Path(run_dir), precision=None)  # replace, not merge: no stale figures
    update_manifest(Path(run_dir), precision={"choice": choice, **why})
    return choice, why


# The one spelling of a number format, from params to the CLI to the manifest, and what
# it is called by the libraries that take it (torch's dtypes, accelerate's autocast).
FORMATS = ("fp32", "bf16", "fp16")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_ACCELERATE = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def weights_dtype(choice: str, override: str | None = None) -> str:
    """torch's dtype name for inference weights (generation, scoring): a stage's own
    setting (teacher_sampling.dtype) if given, else the run's choice."""
    return _TORCH_DTYPES[override or choice]


def autocast_mode(choice: str, override: str | None = None) -> str:
    """The precision training autocasts to: student_training.mixed_precision if given,
    else the run's choice (master weights stay float32 either way)."""
    return override or choice


def accelerate_mixed_precision(choice: str | None) -> str:
    """accelerate's spelling of a training precision (None: fp32)."""
    return _ACCELERATE[choice or "fp32"]
