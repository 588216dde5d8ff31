"""The decoder's view of labelled speech: sequences with the teacher's top-k, the
encoder's states of the clips, and the teacher-forced fidelity of a model to its
teacher (training and evaluation both read these)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..lm.losses import IGNORE_INDEX, forward_kl, topk_divergence
from ..lm.samples import Example, collate
from .labelling import clip_of
from .transcribe import features
from .whisper import END, PREFIX


def examples_of(rows: pd.DataFrame) -> list[Example]:
    """Decoder sequences: the prefix, then the teacher's transcript with its top-k."""
    examples = []
    for row in rows.itertuples():
        ids = np.asarray(row.teacher_ids).tolist()
        examples.append(Example(list(PREFIX) + ids, [IGNORE_INDEX] * (len(PREFIX) - 1) + ids,
                                np.stack(row.topk_ids).tolist(),
                                np.stack(row.topk_logprobs).tolist(), "speech"))
    return examples


@torch.no_grad()
def encoder_states(model, rows: pd.DataFrame, batch_size: int = 8) -> torch.Tensor:
    """The encoder's output for every clip, in row order (float32, on the CPU)."""
    states = []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(rows), batch_size), desc="encoding clips", unit="batch"):
        clips = [clip_of(row) for _, row in rows.iloc[start:start + batch_size].iterrows()]
        inputs = features(clips, model).to(device)
        states.append(model.model.encoder(inputs).last_hidden_state.cpu())
    return torch.cat(states)


@torch.no_grad()
def teacher_forced_items(model, rows: pd.DataFrame, batch_size: int = 8,
                         states: torch.Tensor | None = None) -> pd.DataFrame:
    """Per held-out clip (`item`: its id): KL(teacher || model) over the teacher's top-k
    and top-1 agreement, means over its transcript tokens (`tokens`), with the model fed
    the teacher's transcripts of `rows` (the text suite's figures, for speech: they move
    before the student's own transcripts do). `states`: the model's encoder states of the
    rows' clips, when the caller has them."""
    from transformers.modeling_outputs import BaseModelOutput

    examples, found = examples_of(rows), []
    names = rows["id"] if "id" in rows else pd.Series(rows.index)
    states = encoder_states(model, rows, batch_size) if states is None else states
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], END)
        logits = model(encoder_outputs=BaseModelOutput(
            last_hidden_state=states[start:start + batch_size].to(model.device)),
            decoder_input_ids=batch["input_ids"].to(model.device),
            decoder_attention_mask=batch["attention_mask"].to(model.device)).logits[:, :-1]
        logits, labels = logits.float().cpu(), batch["labels"]
        for row in range(len(logits)):
            keep = labels[row] != IGNORE_INDEX
            one = slice(row, row + 1)
            found.append({
                "item": str(names.iloc[start + row]), "tokens": int(keep.sum()),
                "heldout_kl": float(topk_divergence(forward_kl, logits[one], batch["topk_ids"][one],
                                                    batch["topk_logprobs"][one], labels[one])),
                "top1_agreement": float((logits[row].argmax(-1) == batch["topk_ids"][row, :, 0])
                                        [keep].float().mean())})
    return pd.DataFrame(found, columns=["item", "tokens", "heldout_kl", "top1_agreement"])


def teacher_forced_fidelity(model, rows: pd.DataFrame, batch_size: int = 8,
                            states: torch.Tensor | None = None) -> dict:
    """`teacher_forced_items` over all transcript tokens: {'heldout_kl', 'top1_agreement'}."""
    items = teacher_forced_items(model, rows, batch_size, states)
    tokens = max(int(items["tokens"].sum()), 1)
    return {figure: float((items[figure].fillna(0) * items["tokens"]).sum() / tokens)
            for figure in ("heldout_kl", "top1_agreement")}


def clip_items(name: str, model, heldout, texts: list[str], teacher_texts: list[str],
               batch_size: int, states=None):
    """The items-table rows (distill.evaluation.intervals) of one model on the held-out
    clips: per clip, KL and top-1 agreement under teacher forcing (weighted by the
    transcript's tokens), WER against the teacher's transcript and, where the clip has
    its true text, against that (weighted by the reference's words)."""
    from ..evaluation.intervals import long_items
    from .metrics import wer_items

    per_clip = teacher_forced_items(model, heldout, batch_size, states).merge(
        wer_items(texts, teacher_texts, heldout["id"]).rename(
            columns={"wer": "wer_vs_teacher", "words": "teacher_words"}), on="item")
    figures = {"heldout_kl": ("heldout_kl", "tokens"),
               "top1_agreement": ("top1_agreement", "tokens"),
               "wer_vs_teacher": ("wer_vs_teacher", "teacher_words")}
    has_text = heldout["text"].notna().to_numpy()
    if has_text.any():
        truth = wer_items([t for t, keep in zip(texts, has_text) if keep],
                          list(heldout["text"][has_text]), heldout["id"][has_text])
        per_clip = per_clip.merge(truth, on="item", how="left").fillna({"words": 0})
        figures["wer"] = ("wer", "words")
    return long_items(per_clip, figures, name)
