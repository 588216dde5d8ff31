"""How two tokenizers' cuts of the same text line up (distill.lm.alignment).

For each text, both tokenizers cut it; the spans where both break at the same byte
are aligned. Prints, per direction (teacher -> student), the share of the teacher's
tokens in one-to-one spans (the same string on both sides), in spans of several
tokens on either side, and unaligned; and how many of the teacher's token strings,
over the texts and over its whole vocabulary, exist in the student's vocabulary
(what the mapped top-k loss can use).

    python benchmarks/alignment_coverage.py [--texts outputs/<run>]
        [--models gemma3-270m,smollm2-135m-instruct]
    python benchmarks/alignment_coverage.py --served 64 [--models ...]

Texts: the teacher answers (`completion`) of a run folder's samples, or by default
the validation prose shipped with distill. With `--served N`, the first model is a
teacher behind an API instead: `distill serve` serves it on loopback, stage 01's API
backend samples N prompts from it (as params/cross/gemma-to-smollm2.yaml does
locally), and the coverage is that of the tokens and bytes the endpoint returned,
re-read in the second model's tokens as stage 02 does (distill.lm.cross_tokenizer).
"""

import argparse
import time
from pathlib import Path


def texts_from(source: str | None) -> list[str]:
    if source is None:
        from distill.lm.data import load_validation_prose

        return [part.strip() for part in load_validation_prose().split("\n\n") if part.strip()]
    from distill.lm.samples import read_samples

    return [t for t in read_samples(Path(source))["completion"].tolist() if t]


def served(count: int, teacher: str, student: str) -> None:
    import tempfile

    from distill.core.params import load_params
    from distill.lm.cross_tokenizer import cross_examples
    from distill.lm.data import load_prompts, split_prompts
    from distill.lm.models import load_tokenizer, resolve_model_path
    from distill.lm.samples import read_samples
    from distill.teachers import open_teacher
    from distill.testing import launch

    process, url = launch(teacher)
    try:
        params = load_params(Path(__file__).parents[1] / "params/cross/gemma-to-smollm2.yaml",
                             ["teacher_sampling.backend=openai",
                              f"teacher_sampling.base_url={url}/v1",
                              "teacher_sampling.request_cache=false"])
        train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=count)
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.perf_counter()
            open_teacher(params.teacher_sampling, teacher).sample(train, [], Path(run_dir),
                                                                  seed=0)
            seconds = time.perf_counter() - started
            frame = read_samples(Path(run_dir))
    finally:
        process.terminate()
    with_bytes = int(sum(len(b) > 0 for b in frame["completion_bytes"]))
    stats = {}
    cross_examples(frame, load_tokenizer(resolve_model_path(student)), True, stats)
    coverage = stats["coverage"]
    print(f"{teacher} served by distill serve, {len(frame)} answers in {seconds:.0f} s, "
          f"{with_bytes} with token bytes and top-k; re-read in {student}'s tokens:")
    print(f"  one-to-one spans {coverage['one_to_one']:.3f}   multi-token spans "
          f"{coverage['multi_token']:.3f}   unaligned {coverage['unaligned']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", default=None, help="a run folder (default: shipped prose)")
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m-instruct")
    parser.add_argument("--served", type=int, default=0,
                        help="prompts to sample from the first model behind distill serve")
    args = parser.parse_args()
    if args.served:
        served(args.served, *args.models.split(","))
        return

    from distill.lm.alignment import align_spans
    from distill.lm.models import load_tokenizer, resolve_model_path
    from distill.lm.token_bytes import TokenBytes

    texts = texts_from(args.texts)
    names = args.models.split(",")
    started = time.perf_counter()
    tokenizers = {name: load_tokenizer(resolve_model_path(name)) for name in names}
    vocab = {name: TokenBytes(tokenizer) for name, tokenizer in tokenizers.items()}
    cuts = {name: [[vocab[name].id_to_bytes[i] for i in
                    tokenizer(text, add_special_tokens=False)["input_ids"]] for text in texts]
            for name, tokenizer in tokenizers.items()}
    print(f"{len(texts)} texts, {sum(len(t.encode()) for t in texts)} bytes; tokenizers "
          f"loaded and texts cut in {time.perf_counter() - started:.1f} s")
    for teacher, student in ((names[0], names[1]), (names[1], names[0])):
        one = many = total = shared = 0
        for t_cut, s_cut in zip(cuts[teacher], cuts[student]):
            spans, _, _ = align_spans(t_cut, s_cut)
            one += sum(1 for span in spans if span.one_to_one)
            many += sum(len(span.teacher) for span in spans if not span.one_to_one)
            total += len(t_cut)
            shared += sum(1 for piece in t_cut if piece in vocab[student].bytes_to_id)
        in_vocab = sum(1 for piece in set(vocab[teacher].id_to_bytes)
                       if piece in vocab[student].bytes_to_id)
        print(f"\n{teacher} -> {student}: {total} teacher tokens "
              f"({sum(len(c) for c in cuts[student])} student tokens)")
        print(f"  one-to-one spans {one / total:.3f}   multi-token spans {many / total:.3f}   "
              f"unaligned {(total - one - many) / total:.3f}")
        print(f"  teacher tokens whose string the student has: {shared / total:.3f}; "
              f"of the teacher's vocabulary: {in_vocab} of {len(set(vocab[teacher].id_to_bytes))}"
              f" distinct strings ({in_vocab / len(set(vocab[teacher].id_to_bytes)):.3f})")


if __name__ == "__main__":
    main()
