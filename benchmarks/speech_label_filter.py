"""What the pseudo-label filter buys: students trained on one speech run's labels with
different `max_label_wer` thresholds (and epochs), each scored on the run's held-out
clips (WER against the true text and the teacher, teacher-forced KL).

    python benchmarks/speech_label_filter.py RUN_DIR --arms "null:15" "0.3:30" "0.5:15"

An arm is THRESHOLD:EPOCHS (null keeps every label). Writes
outputs/benchmarks/speech_label_filter.json. Minutes per arm on two cores.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--arms", nargs="+", default=["null:15", "0.3:30", "0.5:15"])
    args = parser.parse_args()

    from distill.speech import batches, labelling, whisper
    from distill.speech.metrics import word_error_rate
    from distill.speech.params import SpeechTrainingParams
    from distill.speech.training import train_student
    from distill.speech.transcribe import features, token_limits, transcribe

    base = yaml.safe_load((args.run_dir / "params.yaml").read_text())["speech_training"]
    teacher, tokenizer = whisper.load_whisper("whisper-tiny.en")
    labels = labelling.read_labels(args.run_dir)
    heldout = labelling.read_labels(args.run_dir, "heldout")
    clips = [labelling.clip_of(row) for _, row in heldout.iterrows()]
    results = []
    for arm in args.arms:
        threshold, epochs = arm.split(":")
        threshold = None if threshold == "null" else float(threshold)
        config = SpeechTrainingParams(**{**base, "epochs": int(epochs), "max_label_wer": threshold,
                                         "checkpoint_every": 10**6})
        rows = labelling.training_rows(labels, threshold)
        student = whisper.build_student(teacher, config.decoder_layers, config.freeze_encoder,
                                        config.encoder_seconds)
        folder = Path(tempfile.mkdtemp())
        started = time.perf_counter()
        log = train_student(student, rows, folder, config, on_step=lambda row, total: None)
        seconds = time.perf_counter() - started
        shutil.rmtree(folder)
        texts = []
        for start in range(0, len(clips), 8):
            part = clips[start:start + 8]
            texts += [tokenizer.decode(r["ids"], skip_special_tokens=True) for r in transcribe(
                student, features(part, student), 96, limits=token_limits(part, 96))]
        results.append({"max_label_wer": threshold, "epochs": int(epochs), "rows": len(rows),
                        "steps": len(log), "train_seconds": seconds,
                        "wer": word_error_rate(texts, list(heldout["text"]))[0],
                        "wer_vs_teacher": word_error_rate(texts, list(heldout["teacher_text"]))[0],
                        **batches.teacher_forced_fidelity(student, heldout)})
        print(json.dumps(results[-1]))
    out = Path("outputs/benchmarks/speech_label_filter.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(args.run_dir), "arms": results}, indent=2))


if __name__ == "__main__":
    main()
