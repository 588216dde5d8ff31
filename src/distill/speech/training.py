"""Stage 02 of a speech run: Distil-Whisper's objective on the suite's training loop.

The loss is the text suite's (`losses.distillation_loss`): cross-entropy on the
teacher's transcript (the pseudo-label) plus the KL to the teacher's cached top-k at
every transcript token. Optimizer, schedule, mixed precision, checkpoints and resume
are the text loop's (loop.py); what differs is the batch: the decoder reads the
encoder's states of the clip. With the encoder frozen those states never change, so
they are computed once, before the first step, and training runs the small decoder
alone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core.params import StudentTrainingParams
from ..core.runs import TRAIN_LOG
from ..lm.losses import IGNORE_INDEX, distillation_loss
from ..lm.samples import collate
from ..training.loop import checkpoint, prepare, resume
from .batches import encoder_states, examples_of
from .labelling import clip_of
from .params import SpeechTrainingParams
from .transcribe import features
from .whisper import END


def loop_config(config: SpeechTrainingParams, mixed_precision: str) -> StudentTrainingParams:
    """The text loop's settings for this speech run (offline top-k KD, keep last)."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name in {g.name for g in dataclasses.fields(StudentTrainingParams)}}
    return StudentTrainingParams(**shared, kd_loss="forward_kl", keep="last",
                                 validation_size=0, mixed_precision=mixed_precision)


def train_student(student, rows: pd.DataFrame, run_dir, config: SpeechTrainingParams, *,
                  seed: int = 0, mixed_precision: str = "fp32", on_step=None) -> pd.DataFrame:
    """Train `student` (in place) on the labelled training `rows`; resumes from the
    newest checkpoint in `run_dir`. Returns the log, one row per optimizer step."""
    from transformers.modeling_outputs import BaseModelOutput

    examples = examples_of(rows)
    loop = loop_config(config, mixed_precision)
    session = prepare(student, len(examples), loop, seed)
    start_step, log = resume(session, run_dir)
    model = session.accelerator.unwrap_model(session.student)
    cached = encoder_states(model, rows) if config.freeze_encoder else None
    model.train()
    model.model.encoder.train(not config.freeze_encoder)
    per_epoch = session.micro_per_epoch
    for step in tqdm(range(start_step, session.total_steps), initial=start_step,
                     total=session.total_steps, desc="training", unit="step",
                     disable=on_step is not None):
        started = time.perf_counter()
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        chosen = order[index * config.batch_size:(index + 1) * config.batch_size].tolist()
        device = session.accelerator.device
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in chosen], END).items()}
        if cached is not None:
            states = cached[chosen].to(device)
        else:
            states = model.model.encoder(features(
                [clip_of(rows.iloc[i]) for i in chosen], model).to(device)).last_hidden_state
        with session.accelerator.autocast():
            logits = session.student(
                encoder_outputs=BaseModelOutput(last_hidden_state=states),
                decoder_input_ids=batch["input_ids"],
                decoder_attention_mask=batch["attention_mask"]).logits[:, :-1]
        parts = distillation_loss(logits, batch["labels"], {k: batch[k] for k in (
            "topk_ids", "topk_logprobs")}, ce_weight=config.ce_weight,
            kd_weight=config.kd_weight, temperature=config.temperature)
        session.accelerator.backward(parts["loss"])
        grad_norm = session.accelerator.clip_grad_norm_(session.trained, loop.max_grad_norm)
        session.optimizer.step()
        session.scheduler.step()
        session.optimizer.zero_grad()
        tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        seconds = time.perf_counter() - started
        log.append({"step": step + 1, "epoch": (step + 1) / per_epoch,
                    "lr": session.scheduler.get_last_lr()[0],
                    **{name: float(value.detach()) for name, value in parts.items()},
                    "grad_norm": float(grad_norm), "tokens": tokens, "seconds": seconds,
                    "tokens_per_second": tokens / seconds})
        last = step + 1 == session.total_steps
        if (step + 1) % config.checkpoint_every == 0 or last:
            checkpoint(session.accelerator, run_dir, step + 1, pd.DataFrame(log),
                       Path(run_dir) / TRAIN_LOG)
        if on_step is not None:
            on_step(log[-1], session.total_steps)
    model.eval()
    return pd.DataFrame(log)
