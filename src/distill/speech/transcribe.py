"""Log-mel features and batched greedy transcription with a key/value cache.

Written out rather than through `generate`, because distillation needs what generate
hides: the teacher's top-k log-probabilities at every transcript token, taken from the
same distribution the greedy choice is made from."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import torch

from .whisper import END, PREFIX, SAMPLE_RATE, window


@lru_cache(maxsize=4)
def _extractor(seconds: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(chunk_length=seconds)  # 80 log-mel bins, as tiny.en




# A transcript longer than this per second of audio is a decoding loop (speech runs at
# about 4 tokens a second; Whisper guards long-form decoding with a compression-ratio
# check for the same failure). Every model is held to the same cap.
MAX_TOKENS_PER_SECOND = 8


def token_limits(clips: list[np.ndarray], max_new_tokens: int) -> list[int]:
    """Each clip's token cap: MAX_TOKENS_PER_SECOND per second of audio, plus a few
    for the end token and punctuation, within `max_new_tokens`."""
    return [min(max_new_tokens, 8 + int(MAX_TOKENS_PER_SECOND * len(c) / SAMPLE_RATE))
            for c in clips]


def features(audio: list[np.ndarray], model=None) -> torch.Tensor:
    """(batch, 80, 100 x seconds) log-mel features of 16 kHz clips, padded (or cut) to
    `model`'s window (Whisper's 30 s when no model is given)."""
    seconds = 30 if model is None else window(model)
    return _extractor(seconds)(audio, sampling_rate=SAMPLE_RATE,
                               return_tensors="pt").input_features


def _allowed_mask(config, vocab: int) -> torch.Tensor:
    """Tokens a transcript may hold: text tokens and <|endoftext|>; no other special or
    timestamp token, nor what the model's config suppresses (as Whisper's decoding)."""
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[END + 1:] = False
    allowed[list(getattr(config, "suppress_tokens", None) or [])] = False
    allowed[END] = True
    return allowed


@torch.inference_mode()
def transcribe(model, feature_batch: torch.Tensor, max_new_tokens: int, top_k: int = 0,
               encoder_states: torch.Tensor | None = None,
               limits: list[int] | None = None) -> list[dict]:
    """Greedy transcripts of a batch: per clip {'ids': tokens up to and with
    <|endoftext|>, or cut at the clip's limit (`limits`, else `max_new_tokens`),
    'topk_ids', 'topk_logprobs' (per token, when top_k > 0)}. The encoder runs once;
    each decoder step feeds one token per clip."""
    from transformers.modeling_outputs import BaseModelOutput

    device = next(model.parameters()).device
    if encoder_states is None:
        encoder_states = model.model.encoder(
            feature_batch.to(device, next(model.parameters()).dtype)).last_hidden_state
    encoder_states = encoder_states.to(device)
    batch = encoder_states.shape[0]
    allowed = _allowed_mask(model.config, model.config.vocab_size).to(device)
    begin = list(getattr(model.config, "begin_suppress_tokens", None) or [])
    tokens = torch.tensor([list(PREFIX)] * batch, device=device)
    outputs = [{"ids": [], "topk_ids": [], "topk_logprobs": []} for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    limit = torch.tensor(limits or [max_new_tokens] * batch, device=device)
    past, step_input = None, tokens
    for step in range(int(limit.max())):
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
                    decoder_input_ids=step_input, cache=past, use_cache=True)
        past = out.cache
        logits = out.logits[:, -1].float().masked_fill(~allowed, float("-inf"))
        if step == 0 and begin:  # no blank or end as the first token
            logits[:, begin] = float("-inf")
        logprobs = torch.log_softmax(logits, -1)
        chosen = logprobs.argmax(-1)
        if top_k:
            values, ids = logprobs.topk(top_k, -1)
        for row in torch.nonzero(~done).flatten().tolist():
            outputs[row]["ids"].append(int(chosen[row]))
            if top_k:
                outputs[row]["topk_ids"].append(ids[row].tolist())
                outputs[row]["topk_logprobs"].append(values[row].tolist())
        done |= (chosen == END) | (limit <= step + 1)
        if bool(done.all()):
            break
        step_input = chosen[:, None]
    return outputs


def timed_transcription(model, clips: list[np.ndarray], max_new_tokens: int) -> dict:
    """Transcribe `clips` one at a time, as a service answering one request does, and
    time it end to end (features, encoder, decoder): real-time factor (seconds of
    compute per second of audio), tokens/s and seconds per clip."""
    seconds = tokens = 0.0
    transcribe(model, features(clips[:1], model), 4)  # warm-up: first-call allocations
    for clip in clips:
        started = time.perf_counter()
        result = transcribe(model, features([clip], model), max_new_tokens,
                            limits=token_limits([clip], max_new_tokens))[0]
        seconds += time.perf_counter() - started
        tokens += len(result["ids"])
    audio_seconds = sum(len(c) for c in clips) / SAMPLE_RATE
    return {"real_time_factor": seconds / audio_seconds, "tokens_per_second": tokens / seconds,
            "seconds_per_clip": seconds / len(clips)}
