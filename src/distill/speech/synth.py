"""Offline English speech from eSpeak NG (the PyPI package `espeakng-loader` ships the
library and its data), through ctypes: no audio stack, no network.

eSpeak is a formant synthesiser: robotic, but intelligible to Whisper, and every
utterance's true text is known, so WER against it measures the models. A speech set
varies the accent (`ACCENTS`), the speaker (`VARIANTS`), the rate and pitch, and adds
white noise at a random signal-to-noise ratio, so it is not one voice reading.
eSpeak's waveform is not bit-for-bit repeatable (two syntheses of one text differ in
phase), so a shard synthesised again holds the same texts and voices, not the same
samples: each shard is written once and kept.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from .whisper import SAMPLE_RATE

# English accents eSpeak ships, and speaker variants (voices/!v); a voice is accent+variant
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak", "whisper")
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_SYNCHRONOUS, _UTF8, _CHARACTER = 2, 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class SpeechUnavailable(RuntimeError):
    """eSpeak NG cannot be loaded; the message says what to install."""


class Synthesizer:
    """eSpeak NG, loaded once per process (the library holds global state: one lock)."""
    _lock = threading.Lock()
    _library = None

    def __init__(self):
        with self._lock:
            if Synthesizer._library is None:
                Synthesizer._library = self._load()
        self.lib, self.rate = Synthesizer._library

    @staticmethod
    def _load():
        try:
            import espeakng_loader
        except ImportError:
            raise SpeechUnavailable("speech synthesis needs the package espeakng-loader; "
                                    "install it with: pip install espeakng-loader") from None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_SYNCHRONOUS, 0,
                                     espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise SpeechUnavailable(f"eSpeak NG failed to start (code {rate})")
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        return lib, rate

    def speak(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50
              ) -> np.ndarray:
        """`text` spoken by `voice` ('en-us', 'en-us+f3', ...) at `rate` words per minute
        and `pitch` (0-100): float32 samples in [-1, 1] at 16 kHz."""
        chunks: list[np.ndarray] = []

        def collect(wav, count, events):
            if count > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0  # go on

        callback = _CALLBACK(collect)  # kept alive until the synthesis returns
        encoded = text.encode("utf-8") + b"\0"
        with self._lock:
            self.lib.espeak_SetSynthCallback(callback)
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak has no voice {voice!r}; accents: {', '.join(ACCENTS)}")
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            status = self.lib.espeak_Synth(encoded, len(encoded), 0, _CHARACTER, 0, _UTF8,
                                           None, None)
            self.lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"eSpeak failed on {text[:40]!r} (code {status})")
        audio = (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)).astype(np.float32)
        return resample(audio / 32768.0, self.rate, SAMPLE_RATE)


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE, taps: int = 16
             ) -> np.ndarray:
    """`audio` at `rate` Hz resampled to `target` Hz: windowed-sinc interpolation over
    `taps` input samples each side, low-passed below the lower Nyquist frequency."""
    audio = np.asarray(audio, np.float32)
    if rate == target or audio.size == 0:
        return audio
    cutoff = min(1.0, target / rate)  # of the input's Nyquist frequency
    times = np.arange(int(round(audio.size * target / rate))) * (rate / target)
    base = np.floor(times).astype(np.int64)
    offsets = np.arange(-taps + 1, taps + 1)
    index = base[:, None] + offsets[None, :]
    distance = times[:, None] - index
    window = 0.5 + 0.5 * np.cos(np.pi * np.clip(distance / taps, -1, 1))  # Hann
    kernel = cutoff * np.sinc(cutoff * distance) * window
    values = np.where((index >= 0) & (index < audio.size),
                      audio[np.clip(index, 0, audio.size - 1)], 0.0)
    return (values * kernel).sum(axis=1).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus white noise at `snr_db` decibels below its power."""
    power = float(np.mean(audio ** 2)) or 1e-8
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), audio.shape)
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)
