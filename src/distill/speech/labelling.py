"""Stage 01 of a speech run: the audio set, and the teacher's pseudo-labels.

The set is planned from the seed alone (texts, voices, rates, pitches, noise), so a
resumed run plans the same utterances; each shard of utterances is synthesised (or
read), transcribed by the teacher and written to Parquet in one go: a finished shard
is never redone, an interrupted one is. A row holds the true text, the audio (16-bit
samples for synthetic speech; path and sha256 for a file), the teacher's transcript
tokens with their top-k log-probs, and the transcript's WER against the true text.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core.runs import atomic_file, sha256
from ..lm.data import builtin_path
from .metrics import word_error_rate
from .params import SpeechLabellingParams
from .transcribe import features, token_limits, transcribe
from .whisper import SAMPLE_RATE

FOLDER = "speech"  # the shards, in the run folder
AUDIO_SUFFIXES = (".wav", ".flac")
SILENT = 1e-4  # peak amplitude below which a clip counts as silent


def text_pool(max_words: int) -> list[str]:
    """Sentences of 3 to `max_words` words from what ships with distill: the corpus and
    validation prose, the generic seeds and the prompt set (questions, arithmetic)."""
    texts = []
    for name in ("corpus.txt", "validation_prose.txt", "generic_seeds.txt"):
        lines = [line for line in builtin_path(name).read_text().splitlines()
                 if not line.startswith("#")]
        paragraphs = " ".join(line.strip() or "\n" for line in lines).split("\n")
        texts += [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p.strip())]
    for line in builtin_path("prompts.jsonl").read_text().splitlines():
        texts.append(json.loads(line)["prompt"].split(" Answer with")[0])
    unique = dict.fromkeys(t.strip() for t in texts if 3 <= len(t.split()) <= max_words)
    return sorted(unique)


def plan_synthetic(config: SpeechLabellingParams, seed: int) -> list[dict]:
    """The utterances of a synthetic set: distinct texts for training and held-out,
    the held-out ones in voices that never train."""
    rng = np.random.default_rng(seed)
    pool = text_pool(config.max_words)
    wanted = config.train_size + config.heldout_size
    if len(pool) < wanted:
        raise ValueError(f"speech_labelling: {wanted} utterances asked for, the shipped texts "
                         f"hold {len(pool)} of at most {config.max_words} words; lower "
                         "train_size/heldout_size or raise max_words")
    texts = [pool[i] for i in rng.permutation(len(pool))[:wanted]]
    rows = []
    for index, text in enumerate(texts):
        split = "heldout" if index < config.heldout_size else "train"
        voices = config.heldout_voices if split == "heldout" else config.train_voices
        rows.append({"id": f"{split}-{index:05d}", "split": split, "text": text,
                     "voice": voices[int(rng.integers(len(voices)))],
                     "words_per_minute": int(rng.integers(*config.words_per_minute,
                                                          endpoint=True)),
                     "pitch": int(rng.integers(*config.pitch, endpoint=True)),
                     "snr_db": float(rng.uniform(*config.snr_db)), "path": None})
    return rows


def plan_folder(folder: Path, config: SpeechLabellingParams, seed: int) -> list[dict]:
    """The utterances of a folder of audio files: `heldout_size` of them (seeded) are
    held out, up to `train_size` of the rest train. A .txt file of the same name holds
    the transcript; without one, text is None (no WER, no pseudo-label filter)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"speech_labelling.audio: {folder} holds no "
                                f"{' or '.join(AUDIO_SUFFIXES)} file")
    order = np.random.default_rng(seed).permutation(len(files))
    rows = []
    for rank, i in enumerate(order[:config.heldout_size + config.train_size]):
        path = files[i]
        transcript = path.with_suffix(".txt")
        split = "heldout" if rank < config.heldout_size else "train"
        rows.append({"id": f"{split}-{rank:05d}", "split": split, "path": str(path),
                     "text": transcript.read_text().strip() if transcript.exists() else None,
                     "voice": None, "words_per_minute": None, "pitch": None, "snr_db": None})
    return rows


def read_audio(path: str) -> np.ndarray:
    """A file's samples as mono float32 at 16 kHz (resampled, with a warning, when the
    file has another rate). Raises ValueError for an unreadable file."""
    import soundfile

    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"{path}: not readable audio ({error})") from None
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        from .synth import resample

        warnings.warn(f"{path}: {rate} Hz resampled to {SAMPLE_RATE} Hz", stacklevel=2)
        audio = resample(audio, rate)
    return audio


def utterance_audio(row: dict, seed: int, synthesizer=None) -> np.ndarray:
    """The clip of a planned row: synthesised (noise seeded by the row) or read."""
    if row["path"] is not None:
        return read_audio(row["path"])
    from .synth import add_noise

    clean = synthesizer.speak(row["text"], row["voice"], row["words_per_minute"], row["pitch"])
    rng = np.random.default_rng([seed, int(row["id"].split("-")[1])])
    return add_noise(clean, row["snr_db"], rng)


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32767


def label_shards(teacher, tokenizer, rows: list[dict], run_dir: Path,
                 config: SpeechLabellingParams, seed: int) -> pd.DataFrame:
    """Write every shard not yet written; return all rows. Unreadable or silent clips
    are left out with a warning (counted in the result's `skipped` attribute)."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    synthesizer = None
    if any(row["path"] is None for row in rows):
        from .synth import Synthesizer

        synthesizer = Synthesizer()
    starts = range(0, len(rows), config.shard_size)
    for number, start in enumerate(tqdm(starts, desc="labelling shards", unit="shard")):
        path = folder / f"labels-{number:05d}.parquet"
        if not path.exists():
            _write_shard(path, teacher, tokenizer, rows[start:start + config.shard_size],
                         config, seed, synthesizer)
    return read_labels(run_dir)


def _write_shard(path, teacher, tokenizer, rows, config, seed, synthesizer) -> None:
    kept, clips = [], []
    for row in rows:
        try:
            audio = utterance_audio(row, seed, synthesizer)
        except ValueError as error:
            warnings.warn(f"skipped: {error}", stacklevel=2)
            continue
        if audio.size == 0 or float(np.abs(audio).max()) < SILENT:
            warnings.warn(f"skipped {row['path'] or row['id']}: silent", stacklevel=2)
            continue
        kept.append(dict(row, seconds=audio.size / SAMPLE_RATE,
                         audio=to_pcm16(audio) if row["path"] is None else None,
                         sha256=sha256(Path(row["path"])) if row["path"] else None))
        clips.append(audio)
    for start in range(0, len(clips), config.batch_size):
        part = clips[start:start + config.batch_size]
        batch = transcribe(teacher, features(part), config.max_new_tokens,
                           config.top_k_logprobs, limits=token_limits(part, config.max_new_tokens))
        for row, result in zip(kept[start:], batch):
            row.update(teacher_ids=result["ids"], topk_ids=result["topk_ids"],
                       topk_logprobs=result["topk_logprobs"],
                       teacher_text=tokenizer.decode(result["ids"], skip_special_tokens=True))
    scored = [row for row in kept if row["text"]]  # one metric call for the shard
    for row, wer in zip(scored, word_error_rate([r["teacher_text"] for r in scored],
                                                [r["text"] for r in scored])[1]):
        row["teacher_wer"] = wer
    for row in kept:
        row.setdefault("teacher_wer", None)
    with atomic_file(path, "wb") as handle:
        pd.DataFrame(kept).to_parquet(handle)


def read_labels(run_dir: Path, split: str | None = None) -> pd.DataFrame:
    """Every labelled utterance of a run (one split, if given)."""
    shards = sorted((Path(run_dir) / FOLDER).glob("labels-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{run_dir}: no speech labels; run the speech labelling "
                                "notebook (stage 01) first")
    frame = pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
    return frame if split is None else frame[frame["split"] == split].reset_index(drop=True)


def clip_of(row) -> np.ndarray:
    """A labelled row's audio, from its bytes or, checked by sha256, its file."""
    if isinstance(row["audio"], bytes):
        return from_pcm16(row["audio"])
    if sha256(Path(row["path"])) != row["sha256"]:
        raise ValueError(f"{row['path']} changed since it was labelled (sha256 differs); "
                         "label the set again")
    return read_audio(row["path"])


def training_rows(labels: pd.DataFrame, max_label_wer: float | None) -> pd.DataFrame:
    """Distil-Whisper's pseudo-label filter: the training utterances whose teacher
    transcript is within `max_label_wer` of the true text (all, where there is none)."""
    train = labels[labels["split"] == "train"]
    if max_label_wer is None:
        return train.reset_index(drop=True)
    keep = train["teacher_wer"].isna() | (train["teacher_wer"] <= max_label_wer)
    return train[keep].reset_index(drop=True)
