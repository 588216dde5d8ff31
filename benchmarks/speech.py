"""Teacher vs distilled student on a finished speech run's held-out clips (voices that
never trained): WER against the true text and against the teacher, end-to-end speed one
clip at a time, where the time goes (encoder per clip, decoder per token), parameters
and size.

    python benchmarks/speech.py RUN_DIR [--clips 48] [--threads 2] [--windows 30 15 10]

Writes outputs/benchmarks/speech.json. A minute or two on two cores.
"""

import argparse
import json
import time
from pathlib import Path

import torch


def breakdown(model, clips, max_new_tokens: int) -> dict:
    """Seconds of the encoder per clip and of the decoder per generated token."""
    from distill.speech.transcribe import features, token_limits, transcribe

    encoder = decoder = tokens = 0.0
    for clip in clips:
        feats = features([clip], model)
        started = time.perf_counter()
        with torch.inference_mode():
            states = model.model.encoder(feats).last_hidden_state
        encoder += time.perf_counter() - started
        started = time.perf_counter()
        tokens += len(transcribe(model, None, max_new_tokens, encoder_states=states,
                                 limits=token_limits([clip], max_new_tokens))[0]["ids"])
        decoder += time.perf_counter() - started
    return {"encoder_ms_per_clip": 1000 * encoder / len(clips),
            "decoder_ms_per_token": 1000 * decoder / tokens,
            "tokens_per_clip": tokens / len(clips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--windows", type=int, nargs="*", default=[],
                        help="also time the teacher with its encoder cut to these seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from distill.lm.models import count_parameters, folder_size
    from distill.speech import labelling, whisper
    from distill.speech.metrics import word_error_rate
    from distill.speech.transcribe import features, timed_transcription, token_limits, transcribe

    params = json.loads((args.run_dir / "manifest.json").read_text())
    heldout = labelling.read_labels(args.run_dir, "heldout").head(args.clips)
    clips = [labelling.clip_of(row) for _, row in heldout.iterrows()]
    sources = {"teacher": "whisper-tiny.en", "student": str(args.run_dir / "student")}
    table, transcripts = {}, {}
    for name, source in sources.items():
        model, tokenizer = whisper.load_whisper(source)
        texts = []
        for start in range(0, len(clips), 8):
            part = clips[start:start + 8]
            texts += [tokenizer.decode(r["ids"], skip_special_tokens=True) for r in
                      transcribe(model, features(part, model), args.max_new_tokens,
                                 limits=token_limits(part, args.max_new_tokens))]
        transcripts[name] = texts
        table[name] = {
            "wer": word_error_rate(texts, list(heldout["text"]))[0],
            "wer_vs_teacher": word_error_rate(texts, transcripts["teacher"])[0],
            **timed_transcription(model, clips, args.max_new_tokens),
            **breakdown(model, clips, args.max_new_tokens),
            "parameters_m": count_parameters(model) / 1e6,
            "size_mb": folder_size(whisper.resolve_whisper(source)) / 1e6}
    if args.windows:  # the teacher itself, its encoder cut to shorter windows
        from distill.speech.transcribe import token_limits

        model, tokenizer = whisper.load_whisper(sources["teacher"])
        for seconds in args.windows:
            cut = whisper.build_student(model, list(range(model.config.decoder_layers)), True,
                                        seconds)
            started, texts = time.perf_counter(), []
            for start in range(0, len(clips), 8):
                part = clips[start:start + 8]
                texts += [tokenizer.decode(r["ids"], skip_special_tokens=True) for r in
                          transcribe(cut, features(part, cut), args.max_new_tokens,
                                     limits=token_limits(part, args.max_new_tokens))]
            table[f"teacher_window_{seconds}s"] = {
                "wer": word_error_rate(texts, list(heldout["text"]))[0],
                "wer_vs_teacher": word_error_rate(texts, transcripts["teacher"])[0],
                "batch_seconds": time.perf_counter() - started}
    teacher, student = table["teacher"], table["student"]
    summary = {"wer_ratio": student["wer"] / teacher["wer"],
               "speedup_end_to_end": teacher["seconds_per_clip"] / student["seconds_per_clip"],
               "speedup_decoder_per_token": teacher["decoder_ms_per_token"]
               / student["decoder_ms_per_token"]}
    result = {"run": str(args.run_dir), "clips": len(clips), "threads": args.threads,
              "created": params.get("created"), "models": table, "summary": summary}
    out = Path("outputs/benchmarks/speech.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, row in table.items():
        print(f"{name:8} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    print("  ".join(f"{k} {v:.2f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
