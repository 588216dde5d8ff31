"""Wall time of each provenance test (distill.studies.provenance) at N prompts on this machine.

What each test costs beyond loading the models, as notebook 05 runs it:
- output agreement: greedy answers of the suspect, the candidate and the control
  (generation dominates; the statistic itself is microseconds);
- likelihood: the suspect and the reference score the candidate's and the control's
  answers (four teacher-forced passes over N answers), then the sign-flip test;
- watermark: the suspect's answers (already there for test 1) re-read in its tokens
  and the green pairs counted.

    python benchmarks/provenance_cost.py SUSPECT --candidate T --control C --reference R
        [--prompts 200] [--max-new-tokens 48] [--precision fp32]

Run it with nothing else on the machine: on two cores another busy process slows
every figure several times over.
"""

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suspect")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()

    from distill.core.precision import weights_dtype
    from distill.lm import data, generation, models
    from distill.lm.watermark import Watermark
    from distill.studies import provenance

    chosen = provenance.fresh_prompts(data.load_prompts(), [args.suspect], args.prompts, 0)
    messages = [p["messages"] for p in chosen]
    loaded = {name: models.load_model(name, dtype=weights_dtype(args.precision))
              for name in dict.fromkeys([args.suspect, args.candidate, args.control,
                                         args.reference])}
    answers, seconds = {}, {}
    for role, name in (("suspect", args.suspect), ("candidate", args.candidate),
                       ("control", args.control)):
        started = time.perf_counter()
        answers[role], _ = generation.chat_answers(*loaded[name], messages, args.max_new_tokens,
                                                   args.batch_size, desc=role)
        seconds[f"answers: {role}"] = time.perf_counter() - started
    started = time.perf_counter()
    provenance.output_agreement(answers["suspect"], {"candidate": answers["candidate"],
                                                     "control": answers["control"]})
    seconds["output agreement statistic"] = time.perf_counter() - started

    started = time.perf_counter()
    scores = {(scorer, whose): provenance.answer_logliks(*loaded[name], messages, answers[whose],
                                                         args.batch_size)
              for scorer, name in (("S", args.suspect), ("R", args.reference))
              for whose in ("candidate", "control")}
    provenance.likelihood_lift(scores["S", "candidate"], scores["S", "control"],
                               scores["R", "candidate"], scores["R", "control"])
    seconds["likelihood (4 scorings + 10,000 sign flips)"] = time.perf_counter() - started

    started = time.perf_counter()
    provenance.watermark_radioactivity(loaded[args.suspect][1], messages, answers["suspect"],
                                       Watermark("benchmark"))
    seconds["watermark (re-read + count)"] = time.perf_counter() - started

    answer_time = sum(v for k, v in seconds.items() if k.startswith("answers"))
    print(f"\n{len(messages)} prompts, {args.max_new_tokens} new tokens at most, {args.precision}")
    for name, value in seconds.items():
        print(f"{name:<46} {value:8.1f} s")
    print(f"{'output agreement in all (3 models answer)':<46} {answer_time:8.1f} s")


if __name__ == "__main__":
    main()
