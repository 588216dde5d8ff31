"""How two tokenizers' cuts of the same text line up (distill.alignment).

For each text, both tokenizers cut it; the spans where both break at the same byte
are aligned. Prints, per direction (teacher -> student), the share of the teacher's
tokens in one-to-one spans (the same string on both sides), in spans of several
tokens on either side, and unaligned; and how many of the teacher's token strings,
over the texts and over its whole vocabulary, exist in the student's vocabulary
(what the mapped top-k loss can use).

    python benchmarks/alignment_coverage.py [--texts outputs/<run>]
        [--models gemma3-270m,smollm2-135m-instruct]

Texts: the teacher answers (`completion`) of a run folder's samples, or by default
the validation prose shipped with distill.
"""

import argparse
import time
from pathlib import Path


def texts_from(source: str | None) -> list[str]:
    if source is None:
        from distill.data import load_validation_prose

        return [part.strip() for part in load_validation_prose().split("\n\n") if part.strip()]
    from distill.samples import read_samples

    return [t for t in read_samples(Path(source))["completion"].tolist() if t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", default=None, help="a run folder (default: shipped prose)")
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m-instruct")
    args = parser.parse_args()

    from distill.alignment import align_spans
    from distill.models import load_tokenizer, resolve_model_path
    from distill.token_bytes import TokenBytes

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
