"""Teacher sampling through the API: `distill serve` at concurrency 1 vs N, the local
backend on the same prompts, and a run through a fault-injecting proxy.

    python benchmarks/api_throughput.py [--prompts 32] [--max-new-tokens 64]
        [--concurrency 1,8] [--local-batch-size 8] [--fault-rate 0.2] [--fault-seed 7]

`distill serve` runs in its own process (as a user runs it); the client is the
openai backend of notebook 01 (cache off). Prints tokens/s per configuration, the
API path's overhead against the local backend, and, for the fault run, faults
injected vs faults counted by the health report and samples lost.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from distill.lm.data import load_prompts, split_prompts
from distill.lm.models import load_model
from distill.lm.samples import read_samples
from distill.teachers import health
from distill.teachers import local as sampling
from distill.teachers.api_client import Endpoint
from distill.teachers.openai_api import sample_api
from distill.testing import FaultProxy, launch


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--local-batch-size", type=int, default=8)
    parser.add_argument("--fault-rate", type=float, default=0.2,
                        help="share of requests answered with a fault (0: skip the fault run)")
    parser.add_argument("--fault-seed", type=int, default=7,
                        help="seed of the proxy's draws (7 injects every kind at rate 0.2)")
    parser.add_argument("--fault-timeout", type=float, default=45.0,
                        help="client timeout in the fault run; slow faults wait past it")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=args.prompts)
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "temperature": 1.0,
                "top_p": 1.0, "top_k_logprobs": 20}
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("DISTILL_BENCH_KEY", "unused")  # distill serve runs without a key
    # float32, as the local backend it is compared with
    server, url = launch(args.teacher, "--max-batch-size", str(max(levels)), "--precision", "fp32")
    _, tokenizer = load_model(args.teacher)
    results = {"prompts": len(train), **settings, "api": {}}
    work = Path(tempfile.mkdtemp(prefix="distill-api-bench-"))

    def api_run(name: str, base_url: str, concurrency: int, **endpoint) -> tuple[dict, dict]:
        target = Endpoint(base_url=f"{base_url}/v1", model=args.teacher,
                          api_key_env="DISTILL_BENCH_KEY", concurrency=concurrency, **endpoint)
        start = time.perf_counter()
        stats, log = sample_api(target, tokenizer, train, [], work / name, seed=0,
                                shard_size=len(train), cache_dir=None, **settings)
        wall = time.perf_counter() - start
        report = health.summarize(health.requests_frame(log.records), len(train),
                                  len(stats["failed_prompts"]))
        return {"tokens": stats["tokens"], "seconds": wall,
                "tokens_per_second": stats["tokens"] / wall}, report

    try:
        api_run("warmup", url, 1)  # first requests pay for connections and lazy init
        for concurrency in levels:
            results["api"][concurrency], report = api_run(f"c{concurrency}", url, concurrency)
            results["api"][concurrency]["latency_p50_s"] = report["latency_s"]["p50"]
        if args.fault_rate:
            proxy = FaultProxy(url, rate=args.fault_rate, seed=args.fault_seed,
                               slow_s=args.fault_timeout + 5, retry_after_s=1.0)
            with proxy as proxy_url:
                run, report = api_run("faults", proxy_url, max(levels),
                                      request_timeout=args.fault_timeout, max_retries=8)
            samples = read_samples(work / "faults")
            results["faults"] = {
                **run, "injected": dict(proxy.injected),
                "counted": {"rate_limited": report["errors"]["rate_limited"],
                            "server_error": report["errors"]["server_error"],
                            "slow": report["errors"]["timeout"],
                            "drop": report["errors"]["connection"]},
                "samples": len(samples), "unique_prompts": int(samples["prompt_id"].nunique()),
                "samples_lost": report["samples_lost"], "retries": report["retries"]}
    finally:
        server.terminate()
        server.wait(timeout=30)

    model, _ = load_model(args.teacher)
    start = time.perf_counter()
    stats = sampling.sample_teacher(model, tokenizer, train, [], work / "local", seed=0,
                                    shard_size=len(train), batch_size=args.local_batch_size,
                                    **settings)
    wall = time.perf_counter() - start
    results["local"] = {"batch_size": args.local_batch_size, "tokens": stats["tokens"],
                        "seconds": wall, "tokens_per_second": stats["tokens"] / wall}

    print(f"\n{len(train)} prompts, max_new_tokens={args.max_new_tokens}, top-20 log-probs, "
          "greedy")
    print(f"{'path':<28} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for concurrency, row in results["api"].items():
        print(f"{'API, concurrency ' + str(concurrency):<28} {row['tokens']:>7} "
              f"{row['seconds']:>8.1f} {row['tokens_per_second']:>9.1f}")
    local = results["local"]
    print(f"{'local, batch ' + str(local['batch_size']):<28} {local['tokens']:>7} "
          f"{local['seconds']:>8.1f} {local['tokens_per_second']:>9.1f}")
    top = results["api"][max(levels)]["tokens_per_second"]
    low = results["api"][min(levels)]["tokens_per_second"]
    print(f"concurrency {max(levels)} vs {min(levels)}: {top / low:.2f}x; "
          f"API (concurrency {max(levels)}) vs local: {top / local['tokens_per_second']:.2f}x")
    if "faults" in results:
        faults = results["faults"]
        print(f"fault run (rate {args.fault_rate}): injected {faults['injected']}, counted "
              f"{faults['counted']}, samples {faults['samples']} of {len(train)} "
              f"({faults['unique_prompts']} distinct), lost {faults['samples_lost']}, "
              f"{faults['tokens_per_second']:.1f} tokens/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
