"""One precision for the whole run, chosen by measurement rather than assumed.

CPUs of the same kind differ: where the processor has native bfloat16 (AVX512-BF16,
AMX) bfloat16 matrix products run several times the float32 rate; where it has not,
they run 7 to 90 times *slower*. So `run.precision: auto` (the default) times both
at the model's own shapes, in well under a second, and picks bf16 only where it is
at least `MIN_SPEEDUP` times faster; otherwise fp32. On a GPU, auto is bf16 where the
device supports it. An explicit fp32, bf16 or fp16 wins over the probe.

`distill run` probes once, in its own process, records the choice and the figures
in the manifest and hands the choice to every notebook, so the stages (and a
resumed run) agree without probing again.
"""

from __future__ import annotations

import time

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_SPEEDUP = 1.5  # bf16 must beat fp32 by this much to be worth its rounding
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (rows, inner, columns) of the products a forward pass of the embedded teacher makes
# (width 576, MLP 1536): attention/MLP projections at decode (32 rows: one token of a
# batch of 32) and at training sizes (512 rows), and the LM head (vocabulary 49,152).
SHAPES = ((32, 576, 1536), (32, 1536, 576), (512, 576, 1536), (512, 1536, 576),
          (32, 576, 49152))


def _rate(dtype: torch.dtype, shapes, budget_s: float) -> float:
    """Multiply-adds per second over `shapes`, each product repeated until `budget_s`
    (split among them) is spent; the first call of each is a warm-up."""
    flops, seconds = 0.0, 0.0
    for rows, inner, columns in shapes:
        a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, columns, dtype=dtype)
        torch.mm(a, b)
        start, repeats = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < budget_s / len(shapes) or repeats < 2:
            torch.mm(a, b)
            repeats += 1
        flops += 2.0 * rows * inner * columns * repeats
        seconds += elapsed
    return flops / seconds


def probe(shapes=SHAPES, budget_s: float = 0.2) -> dict:
    """Time float32 and bfloat16 products at `shapes` on the CPU (about 2 x budget_s
    plus warm-up). Returns their GFLOP/s and the bf16 speed-up."""
    fp32 = _rate(torch.float32, shapes, budget_s)
    bf16 = _rate(torch.bfloat16, shapes, budget_s)
    return {"fp32_gflops": round(fp32 / 1e9, 2), "bf16_gflops": round(bf16 / 1e9, 2),
            "bf16_speedup": round(bf16 / fp32, 3), "threads": torch.get_num_threads()}


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


def torch_dtype(precision: str) -> torch.dtype:
    """The weights' dtype for inference (generation, scoring) at `precision`."""
    return DTYPES[precision]


def autocast_mode(precision: str) -> str:
    """accelerate's mixed_precision for training at `precision`: master weights stay
    float32, products run in the low precision."""
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
