"""Matrix-multiply rate, float32 vs bfloat16, at the shapes a training step of the
default student uses (848 tokens x width 576 x MLP 1536) and at 2048 square.

    python benchmarks/matmul_dtypes.py

On some CPUs bfloat16 is fast for large square products and very slow for these
thin ones; this is why `mixed_precision: bf16` can be slower than float32 on CPU.
"""

import time

import torch


def gflops(a, b, repeats=5):
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds / 1e9


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'dtype':<10} {'x@W':>8} {'g@W.T':>8} {'x.T@g':>8} {'2048^2':>8}   GFLOP/s")
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(848, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        g, square = torch.randn(848, 1536, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        rates = [gflops(x, w), gflops(g, w.t()), gflops(x.t(), g), gflops(square, square, 3)]
        print(f"{str(dtype).removeprefix('torch.'):<10} " + " ".join(f"{r:>8.1f}" for r in rates))


if __name__ == "__main__":
    main()
