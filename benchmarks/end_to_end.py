"""Wall time of a whole pipeline run, stage by stage, from the run's manifest.

    python benchmarks/end_to_end.py params/default.yaml
    python benchmarks/end_to_end.py outputs/<run>      # report an existing run
"""

import json
import sys
import time
from pathlib import Path

from distill.pipeline import run_pipeline


def main():
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "params/default.yaml")
    if source.is_dir() and (source / "manifest.json").exists():
        run_dir, total = source, None
    else:
        start = time.perf_counter()
        run_dir = run_pipeline(source)
        total = time.perf_counter() - start
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print(f"\n{run_dir}")
    for stage, info in manifest["stages"].items():
        print(f"{stage:<18} {info['seconds']:>8.1f} s")
    stages = sum(info["seconds"] for info in manifest["stages"].values())
    print(f"{'stages':<18} {stages:>8.1f} s")
    if total is not None:
        print(f"{'wall (with setup)':<18} {total:>8.1f} s")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ["parameters_m", "size_mb", "heldout_kl", "top1_agreement", "perplexity",
            "bits_per_byte", "next_word_agreement", "rouge_l_vs_teacher", "exact_match",
            "reference_in_answer"]
    print(f"\n{'model':<13}" + "".join(f"{k[:14]:>15}" for k in keys) + f"{'gen tok/s':>11}")
    for model, row in metrics["models"].items():
        cells = "".join(f"{row[k]:>15.4g}" if row.get(k) is not None else f"{'-':>15}"
                        for k in keys)
        speed = metrics["speed"][model]["generation_tokens_per_second"]
        print(f"{model:<13}{cells}{speed:>11.1f}")


if __name__ == "__main__":
    main()
