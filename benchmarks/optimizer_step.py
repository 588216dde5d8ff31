"""One AdamW step on the pruned 15-layer student: the default (foreach) implementation
vs the fused kernel that distill.training uses where available.

    python benchmarks/optimizer_step.py [--steps 5]
"""

import argparse
import time

import torch

from distill.lm.models import load_model, prune_layers


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    teacher, _ = load_model("smollm2-135m-instruct")
    student = prune_layers(teacher)
    del teacher
    parameters = list(student.parameters())
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter) * 1e-3
    print(f"{sum(p.numel() for p in parameters) / 1e6:.1f} M parameters, "
          f"{torch.get_num_threads()} threads")
    for name, options in (("foreach (default)", {}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(parameters, lr=1e-5, **options)
        optimizer.step()  # state allocation
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        print(f"{name:<18} {(time.perf_counter() - start) / args.steps:.3f} s/step")


if __name__ == "__main__":
    main()
