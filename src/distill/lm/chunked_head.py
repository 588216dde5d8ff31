"""The LM head projected together with the loss, a chunk of positions at a time.

The logits of a batch (positions x vocabulary: 49,152 columns for the default
teacher, 262,144 for Gemma's) and their gradient dominate the activation memory of
a distillation step. Here they exist one chunk at a time: each chunk is projected,
its loss computed and its gradient taken at once, inside the forward pass, and
only the gradients with respect to the hidden states and the head's weight are
kept for the backward pass. Nothing is projected twice, so the step costs what
it costs with the full logits.
"""

from __future__ import annotations

import torch

from .losses import IGNORE_INDEX, distillation_loss

# Positions per chunk: 256 x 49,152 float32 logits are 50 MB, and a chunk lives only
# while its gradient is taken.
HEAD_CHUNK_POSITIONS = 256


def distillation_loss_from_hidden(hidden, head_weight, labels, teacher: dict, *,
                                  ce_weight: float, kd_weight: float, temperature: float,
                                  kd_loss: str = "forward_kl", options: dict | None = None,
                                  chunk_positions: int = HEAD_CHUNK_POSITIONS) -> dict:
    """`distillation_loss` with the student's logits given as hidden states (batch,
    seq, width) and the LM head's weight (vocab, width): logits = hidden @ W^T.

    The head is projected `chunk_positions` kept positions at a time, and each chunk's
    gradient (with respect to its hidden states and to W) is taken at once, before the
    next chunk is projected. So the (positions x vocab) logits and their gradient exist
    one chunk at a time, in the forward and in the backward pass, and nothing is
    projected twice: the result and its gradients equal `distillation_loss` on the
    full logits (up to float summation order). Returns the same parts."""
    keep = labels != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0 or not (ce_weight or kd_weight):  # nothing to project: 0, with a graph
        zero = hidden.sum() * 0.0
        return {"loss": zero, **({"ce": zero} if ce_weight else {}),
                **({"kd": zero} if kd_weight else {})}
    signal = {name: value[keep] for name, value in teacher.items() if value is not None}
    weights = {"ce_weight": ce_weight, "kd_weight": kd_weight, "temperature": temperature,
               "kd_loss": kd_loss, "options": options}
    names = ["loss", *(["ce"] if ce_weight else []), *(["kd"] if kd_weight else [])]
    values = _ChunkedHeadLoss.apply(hidden[keep], head_weight, labels[keep], signal, weights,
                                    names, chunk_positions)
    return dict(zip(names, values))


class _ChunkedHeadLoss(torch.autograd.Function):
    """Forward: the loss parts, summed chunk by chunk, with each chunk's gradient taken
    inside the forward pass and kept (d hidden, d W). Backward: those, scaled.
    Under autocast the products run in its dtype, as the model's own head would."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, signal, weights, names, chunk):
        count = hidden.shape[0]
        grad_hidden, grad_weight = torch.zeros_like(hidden), torch.zeros_like(weight)
        w = weight.detach()
        device = hidden.device.type
        if torch.is_autocast_enabled(device):  # cast the head once, not once per chunk
            w = w.to(torch.get_autocast_dtype(device))
        sums = torch.zeros(len(names), dtype=torch.float32, device=hidden.device)
        for start in range(0, count, chunk):
            end = min(start + chunk, count)
            h = hidden[start:end].detach()
            # The chunk's logits are a leaf: the loss's gradient is taken with respect to
            # them only, and the two products below turn it into d hidden and d W.
            logits = (h @ w.T).requires_grad_(True)
            with torch.enable_grad():
                parts = distillation_loss(
                    logits[None], labels[None, start:end],
                    {name: value[None, start:end] for name, value in signal.items()},
                    ce_weight=weights["ce_weight"], kd_weight=weights["kd_weight"],
                    temperature=weights["temperature"], kd_loss=weights["kd_loss"],
                    options=weights["options"])
                share = (end - start) / count  # the chunk's weight in the mean
                (d_logits,) = torch.autograd.grad(parts["loss"] * share, logits)
            grad_hidden[start:end] = d_logits @ w.to(d_logits.dtype)
            grad_weight += d_logits.T @ h.to(d_logits.dtype)
            sums += torch.stack([parts[n].detach().float() for n in names]) * share
            del logits, d_logits  # free the chunk before the next is projected
        ctx.save_for_backward(grad_hidden, grad_weight)
        return tuple(sums[i] for i in range(len(names)))

    @staticmethod
    def backward(ctx, *grad_outputs):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_outputs[0]  # only the total carries a gradient; the parts are logged
        if not torch.equal(scale, torch.ones_like(scale)):  # 1 in training: no copies
            grad_hidden, grad_weight = grad_hidden * scale, grad_weight * scale
        return grad_hidden, grad_weight, None, None, None, None, None
