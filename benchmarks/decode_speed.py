"""What each model costs to serve, as stage 03 measures it: greedy decode tokens/s at
fixed length (no early stop) at each batch size, teacher-forced scoring tokens/s, and
each over the first model's (the teacher).

    python benchmarks/decode_speed.py [MODEL ...] [--shape layers=14] [--shape layers=20,mlp=0.5]
                                      [--batch-sizes 1,32] [--new-tokens 64] [--repeats 3]
                                      [--precision auto]

MODEL: an embedded teacher name, a Hugging Face id or a folder (a run's `student/`);
the first is the reference (default: the embedded teacher). `--shape` adds a model of
the reference cut to that shape (decoder layers, share of MLP channels): its speed is
that of any student of that shape, so a speed budget can be explored before training.
All models run in one process, one after another, at one precision; prompts are the
shipped prompts under each model's chat template.
"""

import argparse

import pandas as pd
import torch

from distill.core.precision import resolve, weights_dtype
from distill.lm import data, models, pruning, samples
from distill.lm.speed import speed_table


def parse_shape(text: str) -> dict:
    """'layers=14,mlp=0.5' -> {'layers': 14, 'mlp': 0.5}."""
    shape = dict(part.split("=") for part in text.split(","))
    unknown = set(shape) - {"layers", "mlp"}
    if unknown or "layers" not in shape:
        raise SystemExit(f"--shape {text}: give layers=N and optionally mlp=SHARE")
    return {"layers": int(shape["layers"]), "mlp": float(shape.get("mlp", 1.0))}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["smollm2-135m-instruct"])
    parser.add_argument("--shape", action="append", default=[], type=parse_shape)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()

    precision, _ = resolve(args.precision)
    dtype = getattr(torch, weights_dtype(precision))
    loaded = {name: models.load_model(name) for name in args.models}
    reference = args.models[0]
    teacher, tokenizer = loaded[reference]
    for shape in args.shape:
        width = pruning.llama_mlp(teacher.model.layers[0], 0, "width").down_proj.in_features
        student = pruning.shaped_like(teacher, shape["layers"], round(width * shape["mlp"]))
        loaded[f"layers={shape['layers']},mlp={shape['mlp']:g}"] = (student, tokenizer)
    chats = [p["messages"] for p in data.load_prompts()[:args.prompts]]
    text = data.load_corpus()
    contenders = {name: model.to(dtype) for name, (model, _) in loaded.items()}
    tokenizers = {name: tok for name, (_, tok) in loaded.items()}
    table = speed_table(
        contenders, tokenizers,
        {n: [data.encode_chat(tokenizers[n], c) for c in chats] for n in contenders},
        {n: [e.input_ids for e in samples.prose_examples(tokenizers[n], text, 2048, 256)]
         for n in contenders},
        [int(b) for b in args.batch_sizes.split(",")], args.new_tokens, args.repeats,
        reference=reference)
    frame = pd.DataFrame(table).T
    frame.insert(0, "parameters_m", [models.count_parameters(m) / 1e6 for m in contenders.values()])
    frame.insert(1, "layers", [m.config.num_hidden_layers for m in contenders.values()])
    print(f"precision {precision}, {torch.get_num_threads()} threads, "
          f"{args.new_tokens} new tokens, best of {args.repeats}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.round(2).to_string())


if __name__ == "__main__":
    main()
