"""False alarms and detections of `distill fingerprint --check` against `distill serve`.

Records the fingerprint of TEACHER served in its own process, then re-checks the same
server CHECKS times with 2 to 8 requests in flight (so batches, and their float
rounding, differ from check to check), restarting the server every RESTART_EVERY
checks. Every "changed" there is a false alarm. Then checks three changed teachers
once each: the same weights at the other precision, a copy fine-tuned for 10 steps
(distill.training.finetune, lr 1e-4, batches of 4 corpus blocks of 64 tokens), and
another model (--other).

    python benchmarks/fingerprint_checks.py [--checks 100] [--restart-every 25]
        [--precision fp32] [--teacher smollm2-135m-instruct] [--other gemma3-270m]

Writes outputs/benchmarks/fingerprint_checks.json. Minutes: one check of the 135M
teacher on two cores takes a few seconds.
"""

import argparse
import json
import os
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=100)
    parser.add_argument("--restart-every", type=int, default=25)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--other", default="gemma3-270m")
    parser.add_argument("--output", default="outputs/benchmarks/fingerprint_checks.json")
    args = parser.parse_args()

    import numpy as np

    from distill.lm import data, models, samples
    from distill.teachers import fingerprint
    from distill.teachers.api_client import endpoint_from_spec
    from distill.testing import launch
    from distill.training.finetune import changed_teacher

    os.environ.setdefault("OPENAI_API_KEY", "distill-serve-takes-any-key")

    def serving(model: str, precision: str):
        process, url = launch(model, "--precision", precision, "--name", "teacher")
        return process, endpoint_from_spec(f"{url}/v1#teacher")

    def stop(process) -> None:
        process.terminate()
        process.wait(timeout=60)

    process, endpoint = serving(args.teacher, args.precision)
    started = time.perf_counter()
    recorded = fingerprint.record(fingerprint.EndpointProbes(endpoint), args.teacher)
    record_s = time.perf_counter() - started
    print(f"recorded in {record_s:.1f} s: noise {recorded['noise']:.3g}, "
          f"threshold {recorded['threshold']:.3g} nats")
    rng = random.Random(0)
    medians, alarms, seconds = [], 0, []
    for index in range(args.checks):
        if index and index % args.restart_every == 0:
            stop(process)
            process, endpoint = serving(args.teacher, args.precision)
        endpoint.concurrency = rng.randint(2, 8)
        started = time.perf_counter()
        found = fingerprint.check(recorded, fingerprint.EndpointProbes(endpoint))
        seconds.append(time.perf_counter() - started)
        medians.append(found.median)
        alarms += found.decision == fingerprint.CHANGED
        print(f"check {index + 1}/{args.checks}: {found.summary()}", flush=True)
    stop(process)

    teacher, tokenizer = models.load_model(args.teacher, dtype="float32")
    examples = samples.prose_examples(tokenizer, data.load_corpus(), 10**9, 64)
    tuned = Path("outputs/benchmarks/fingerprint-finetuned-10")
    changed_teacher(teacher, tokenizer, examples, 10, tuned, lr=1e-4, batch_size=4)
    other_precision = "bf16" if args.precision == "fp32" else "fp32"
    cases = {f"same weights, {other_precision}": (args.teacher, other_precision),
             "fine-tuned 10 steps": (str(tuned), args.precision), "another model": (args.other,
                                                                                args.precision)}
    detections = {}
    for case, (model, precision) in cases.items():
        process, endpoint = serving(model, precision)
        found = fingerprint.check(recorded, fingerprint.EndpointProbes(endpoint))
        stop(process)
        detections[case] = {"median_nats": found.median, "decision": found.decision,
                            "answers_changed": found.answers_changed}
        print(f"{case}: {found.summary()}", flush=True)

    result = {"teacher": args.teacher, "precision": args.precision, "checks": args.checks,
              "restarts": (args.checks - 1) // args.restart_every, "record_s": record_s,
              "noise": recorded["noise"], "threshold": recorded["threshold"],
              "false_alarms": alarms, "same_median_max": max(medians),
              "same_median_p99": float(np.percentile(medians, 99)),
              "check_s_median": float(np.median(seconds)), "detections": detections}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
