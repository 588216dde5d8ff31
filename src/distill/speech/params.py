"""The params of a speech run (`run.task: asr`): Distil-Whisper in the suite's three
stages. Declared like the text sections (distill.core.params), one section per speech
notebook, registered with distill.core.params as the task `asr` when this module is
imported (`import distill` does)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.params import register_task
from ..core.params_fields import _p, non_negative, optional_positive, positive

_range = (lambda v: len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1],
          "must be [low, high]")
_voices = (lambda v: len(v) > 0 and all(isinstance(x, str) for x in v),
           "must be a non-empty list of eSpeak voices such as en-us+m3")


@dataclass
class SpeechLabellingParams:
    audio: str = _p("synthetic", "speech set: synthetic (eSpeak NG, offline) or a folder of "
                    ".wav/.flac files, each with an optional .txt transcript of the same name")
    train_size: int = _p(192, "training utterances", positive)
    heldout_size: int = _p(48, "held-out utterances, for evaluation", positive)
    train_voices: list = _p(["en-us+m1", "en-us+f2", "en+m3", "en+f4", "en-gb-x-rp+m5",
                             "en-029+m2", "en-us-nyc+f1", "en-gb-x-rp+klatt2"],
                            "eSpeak voices (accent+speaker) of the training set", _voices)
    heldout_voices: list = _p(["en-us+m4", "en-gb-x-rp+f3", "en+m6", "en-us+klatt"],
                              "voices of the held-out set: none of them trains", _voices)
    words_per_minute: list = _p([140, 200], "speaking rate range, sampled per utterance",
                                _range)
    pitch: list = _p([30, 70], "pitch range (eSpeak 0-100), sampled per utterance", _range)
    snr_db: list = _p([15, 40], "white-noise signal-to-noise range in dB, sampled per "
                      "utterance", _range)
    max_words: int = _p(24, "longest utterance text, in words (Whisper hears 30 s at most)",
                        positive)
    max_new_tokens: int = _p(96, "longest transcript, in tokens", positive)
    top_k_logprobs: int = _p(20, "teacher log-probs kept per transcript token", positive)
    batch_size: int = _p(8, "utterances transcribed together", positive)
    shard_size: int = _p(64, "utterances per Parquet shard: the unit of resume", positive)


@dataclass
class SpeechTrainingParams:
    decoder_layers: list | None = _p(None, "teacher decoder layers the student keeps; null: "
                                     "the first and the last (Distil-Whisper)")
    max_label_wer: float | None = _p(1.0, "pseudo-label filter: training utterances whose "
                                     "teacher transcript has a WER above this against the "
                                     "true text are dropped (null: keep all; 1.0 drops only "
                                     "transcripts with more errors than words)",
                                     optional_positive)
    encoder_seconds: int = _p(30, "audio window of the student's encoder, in seconds: below "
                              "Whisper's 30 it costs less in proportion, and longer clips "
                              "are cut", (lambda v: 1 <= v <= 30, "must be 1..30"))
    freeze_encoder: bool = _p(True, "keep the teacher's encoder as it is (Distil-Whisper "
                              "freezes it; it is copied whole)")
    epochs: int = _p(4, "passes over the training utterances", positive)
    max_steps: int | None = _p(None, "stop after this many optimizer steps (null: epochs "
                               "decide)", optional_positive)
    batch_size: int = _p(16, "utterances per optimizer step", positive)
    lr: float = _p(3.0e-4, "peak learning rate (AdamW)", positive)
    warmup_steps: int = _p(5, "linear warmup, then cosine decay to zero", non_negative)
    kd_weight: float = _p(1.0, "weight of the KL to the teacher's top-k, scaled by T^2",
                          non_negative)
    ce_weight: float = _p(1.0, "weight of cross-entropy on the teacher's transcript "
                          "(the pseudo-label)", non_negative)
    temperature: float = _p(1.0, "softens both distributions in the KD term", positive)
    checkpoint_every: int = _p(20, "optimizer steps between checkpoints", positive)
    keep_checkpoints: bool = _p(True, "keep the newest checkpoint once training ends or "
                                "delete the checkpoints")


@dataclass
class SpeechEvaluationParams:
    batch_size: int = _p(8, "utterances transcribed together for WER", positive)
    speed_utterances: int = _p(16, "held-out utterances timed one at a time (real-time "
                               "factor, tokens/s)", positive)
    max_new_tokens: int = _p(96, "longest transcript, in tokens", positive)


register_task("asr", {"teacher_sampling": SpeechLabellingParams,
                      "student_training": SpeechTrainingParams,
                      "evaluation": SpeechEvaluationParams})
