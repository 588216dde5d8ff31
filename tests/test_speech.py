"""Speech (run.task: asr): the CTranslate2 conversion, eSpeak synthesis, the audio set,
Distil-Whisper's student and its training, WER, and the speech params."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from distill.core.params import ParamsError, load_params
from distill.speech import batches, labelling, synth, transcribe, whisper
from distill.speech import training as speech_training
from distill.speech.metrics import normalize, word_error_rate
from distill.speech.params import SpeechLabellingParams, SpeechTrainingParams


def tiny_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    """A random Whisper with tiny.en's vocabulary (its special ids) and tiny widths."""
    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=51864, d_model=16, encoder_layers=2, decoder_layers=3,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                           max_source_positions=1500, max_target_positions=64,
                           pad_token_id=50256, eos_token_id=50256, bos_token_id=50256,
                           decoder_start_token_id=50257)
    return WhisperForConditionalGeneration(config).eval()


def write_ctranslate2(model, path) -> None:
    """The model in CTranslate2's model.bin layout (version 6; fused q/k/v, float16),
    as its Whisper converter writes it: what `convert_ctranslate2` must read back."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    variables = {"encoder/num_heads": np.array(2, np.int16)}

    def linear(ct2, hf, bias=True):
        variables[f"{ct2}/weight"] = state[f"{hf}.weight"]
        variables[f"{ct2}/bias"] = state[f"{hf}.bias"] if bias else \
            np.zeros(state[f"{hf}.weight"].shape[0], np.float32)

    def fused(ct2, hf, names):
        variables[f"{ct2}/weight"] = np.concatenate([state[f"{hf}.{n}.weight"] for n in names])
        variables[f"{ct2}/bias"] = np.concatenate(
            [state.get(f"{hf}.{n}.bias", np.zeros(state[f"{hf}.{n}.weight"].shape[0],
                                                  np.float32)) for n in names])

    def norm(ct2, hf):
        variables[f"{ct2}/gamma"], variables[f"{ct2}/beta"] = state[f"{hf}.weight"], \
            state[f"{hf}.bias"]

    for name in ("conv1", "conv2"):
        linear(f"encoder/{name}", f"model.encoder.{name}")
    for side in ("encoder", "decoder"):
        variables[f"{side}/position_encodings/encodings"] = \
            state[f"model.{side}.embed_positions.weight"]
    variables["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for side, count in (("encoder", 2), ("decoder", 3)):
        for i in range(count):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn",
                  ("q_proj", "k_proj", "v_proj"))
            linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")

    def text(value: str) -> bytes:
        data = value.encode() + b"\0"
        return struct.pack("<H", len(data)) + data

    out = [struct.pack("<I", 6), text("WhisperSpec"), struct.pack("<I", 3),
           struct.pack("<I", len(variables))]
    for name, value in variables.items():
        value = value.astype(np.float16) if value.dtype == np.float32 else value
        dtype = {np.dtype(np.float16): 4, np.dtype(np.int16): 2}[value.dtype]
        out += [text(name), struct.pack("<B", value.ndim),
                *(struct.pack("<I", d) for d in value.shape), struct.pack("<B", dtype),
                struct.pack("<I", value.nbytes), value.tobytes()]
    out += [struct.pack("<I", 1), text("decoder/projection/weight"),
            text("decoder/embeddings/weight")]
    path.write_bytes(b"".join(out))


def test_a_ctranslate2_whisper_converts_to_the_same_model(tmp_path, teacher_tokenizer):
    source = tiny_whisper()
    folder = tmp_path / "ct2"
    folder.mkdir()
    write_ctranslate2(source, folder / "model.bin")
    (folder / "config.json").write_text('{"suppress_ids": [1, 2], "suppress_ids_begin": [220]}')
    teacher_tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    converted = WhisperForConditionalGeneration.from_pretrained(
        whisper.convert_ctranslate2(folder, tmp_path / "hf")).eval()
    assert converted.config.decoder_layers == 3 and converted.config.suppress_tokens == [1, 2]
    features = torch.randn(1, 80, 3000)
    ids = torch.tensor([[50257, 50362, 400, 500]])
    with torch.no_grad():
        expected = source(input_features=features, decoder_input_ids=ids).logits
        got = converted(input_features=features, decoder_input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)  # float16 on the way


def test_a_file_that_is_not_ctranslate2_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 3) + b"\0" * 16)
    with pytest.raises(whisper.ModelNotFound, match="version 3"):
        whisper.read_ctranslate2(tmp_path / "model.bin")


def test_a_language_model_is_not_a_speech_teacher(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(whisper.ModelNotFound, match="not a Whisper model"):
        whisper.resolve_whisper(str(tmp_path))


def test_the_student_keeps_the_encoder_and_the_first_and_last_decoder_layers():
    teacher = tiny_whisper()
    student = whisper.build_student(teacher)
    assert student.config.decoder_layers == 2 and teacher.config.decoder_layers == 3
    for mine, theirs in ((0, 0), (1, 2)):
        torch.testing.assert_close(student.model.decoder.layers[mine].fc1.weight,
                                   teacher.model.decoder.layers[theirs].fc1.weight)
    assert not any(p.requires_grad for p in student.model.encoder.parameters())
    assert all(p.requires_grad for p in student.model.decoder.parameters())
    with pytest.raises(ValueError, match="0..2"):
        whisper.build_student(teacher, [0, 3])


def test_a_student_with_a_shorter_audio_window_reads_only_that():
    teacher = tiny_whisper()
    student = whisper.build_student(teacher, encoder_seconds=10)
    assert whisper.window(student) == 10 and whisper.window(teacher) == 30
    torch.testing.assert_close(student.model.encoder.embed_positions.weight,
                               teacher.model.encoder.embed_positions.weight[:500])
    clip = np.zeros(4 * whisper.SAMPLE_RATE, np.float32)
    assert transcribe.features([clip], student).shape == (1, 80, 1000)
    assert transcribe.features([clip]).shape == (1, 80, 3000)
    assert transcribe.transcribe(student, transcribe.features([clip], student), 3)[0]["ids"]
    with pytest.raises(ValueError, match="1..30"):
        whisper.build_student(teacher, encoder_seconds=40)


def test_greedy_transcription_keeps_topk_and_matches_one_clip_at_a_time():
    model = tiny_whisper()
    features = torch.randn(2, 80, 3000)
    batch = transcribe.transcribe(model, features, 5, top_k=4)
    alone = transcribe.transcribe(model, features[1:], 5, top_k=4)
    assert batch[1]["ids"] == alone[0]["ids"]
    for row in batch:
        assert 1 <= len(row["ids"]) <= 5
        assert all(len(k) == 4 for k in row["topk_ids"]) and len(row["topk_ids"]) == len(row["ids"])
        # the greedy token is the top-1, and no special token but the end is chosen
        assert [k[0] for k in row["topk_ids"]] == row["ids"]
        assert all(i <= whisper.END for i in row["ids"])
    capped = transcribe.transcribe(model, features, 5, limits=[2, 5])
    assert len(capped[0]["ids"]) <= 2 and capped[1]["ids"] == batch[1]["ids"]
    one_second = np.zeros(whisper.SAMPLE_RATE, np.float32)
    assert transcribe.token_limits([one_second, one_second], 12) == [12, 12]
    assert transcribe.token_limits([one_second[:100]], 96) == [8]  # a loop cannot run away


def test_espeak_speaks_english_at_16_khz():
    speaker = synth.Synthesizer()
    slow = speaker.speak("The river runs to the sea.", "en-us+m3", rate=120)
    fast = speaker.speak("The river runs to the sea.", "en-us+m3", rate=240)
    assert 0.8 < len(slow) / whisper.SAMPLE_RATE < 4.0 and len(fast) < 0.75 * len(slow)
    assert 0.05 < np.abs(slow).max() <= 1.0
    with pytest.raises(ValueError, match="no voice"):
        speaker.speak("hello", "xx-nowhere")


def test_resampling_keeps_the_pitch_and_noise_meets_its_snr():
    rate = 22_050
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    out = synth.resample(tone, rate)
    assert len(out) == whisper.SAMPLE_RATE
    peak = np.argmax(np.abs(np.fft.rfft(out))) * whisper.SAMPLE_RATE / len(out)
    assert abs(peak - 440) < 2
    noisy = synth.add_noise(tone * 0.5, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean((tone * 0.5) ** 2) / np.mean((noisy - tone * 0.5) ** 2))
    assert abs(snr - 20) < 0.5


def test_the_synthetic_plan_holds_out_texts_and_voices():
    config = SpeechLabellingParams(train_size=30, heldout_size=10)
    plan = labelling.plan_synthetic(config, seed=3)
    assert plan == labelling.plan_synthetic(config, seed=3)  # a resumed run plans the same
    train = [r for r in plan if r["split"] == "train"]
    heldout = [r for r in plan if r["split"] == "heldout"]
    assert len(train) == 30 and len(heldout) == 10
    assert not {r["text"] for r in train} & {r["text"] for r in heldout}
    assert {r["voice"] for r in heldout} <= set(config.heldout_voices)
    assert not {r["voice"] for r in train} & set(config.heldout_voices)
    with pytest.raises(ValueError, match="lower train_size"):
        labelling.plan_synthetic(SpeechLabellingParams(train_size=100_000), 0)


def test_a_folder_of_audio_files_with_bad_ones(tmp_path):
    import pandas as pd
    import soundfile

    speaker = synth.Synthesizer()
    good = speaker.speak("A lighthouse stands on the rock.", "en-us")
    soundfile.write(tmp_path / "a.wav", synth.resample(good, 16_000, 22_050), 22_050)
    (tmp_path / "a.txt").write_text("A lighthouse stands on the rock.")
    soundfile.write(tmp_path / "b.flac", good, 16_000)  # no transcript
    soundfile.write(tmp_path / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    config = SpeechLabellingParams(train_size=10, heldout_size=1, batch_size=4, max_new_tokens=4,
                                   top_k_logprobs=3)
    plan = labelling.plan_folder(tmp_path, config, seed=0)
    assert len(plan) == 4 and sum(r["split"] == "heldout" for r in plan) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = labelling.label_shards(tiny_whisper(), _Decoder(), plan, tmp_path / "run",
                                        config, seed=0)
    messages = " ".join(str(w.message) for w in caught)
    assert "22050 Hz resampled" in messages and "silent" in messages and "not readable" in messages
    assert sorted(labels["path"].map(lambda p: p.split("/")[-1])) == ["a.wav", "b.flac"]
    by_name = {p.split("/")[-1]: row for p, (_, row) in zip(labels["path"], labels.iterrows())}
    assert by_name["a.wav"]["text"] and pd.isna(by_name["b.flac"]["text"])
    assert pd.isna(by_name["b.flac"]["teacher_wer"]) and by_name["a.wav"]["teacher_wer"] >= 0
    assert labelling.clip_of(by_name["b.flac"]).shape == good.shape
    (tmp_path / "b.flac").write_bytes((tmp_path / "a.wav").read_bytes())
    with pytest.raises(ValueError, match="changed since it was labelled"):
        labelling.clip_of(by_name["b.flac"])


class _Decoder:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if i < whisper.END)


def test_labelling_resumes_at_the_first_missing_shard(tmp_path):
    config = SpeechLabellingParams(train_size=3, heldout_size=1, shard_size=2, batch_size=2,
                                   max_words=8, max_new_tokens=3, top_k_logprobs=2)
    plan = labelling.plan_synthetic(config, seed=0)
    model = tiny_whisper()
    first = labelling.label_shards(model, _Decoder(), plan, tmp_path, config, seed=0)
    shards = sorted((tmp_path / labelling.FOLDER).glob("labels-*.parquet"))
    assert len(shards) == 2 and list(first["id"]) == [r["id"] for r in plan]
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    again = labelling.label_shards(model, _Decoder(), plan, tmp_path, config, seed=0)
    assert shards[0].stat().st_mtime_ns == kept and shards[1].exists()
    for column in ("id", "text", "voice", "words_per_minute", "snr_db"):  # the same plan
        assert list(again[column]) == list(first[column]), column


def test_the_pseudo_label_filter_drops_far_transcripts_only_from_training():
    import pandas as pd

    labels = pd.DataFrame({"split": ["train", "train", "train", "heldout"],
                           "teacher_wer": [0.1, 0.5, None, 0.9]})
    kept = labelling.training_rows(labels, 0.3)
    assert list(kept["teacher_wer"].fillna(-1)) == [0.1, -1]
    assert len(labelling.training_rows(labels, None)) == 3


def test_training_lowers_the_loss_and_resumes(tmp_path):
    import pandas as pd

    teacher = tiny_whisper()
    clips = [np.random.default_rng(i).normal(0, 0.1, 16_000).astype(np.float32) for i in range(4)]
    answers = transcribe.transcribe(teacher, transcribe.features(clips), 6, top_k=5)
    rows = pd.DataFrame([{"audio": labelling.to_pcm16(c), "path": None, "teacher_ids": a["ids"],
                          "topk_ids": a["topk_ids"], "topk_logprobs": a["topk_logprobs"]}
                         for c, a in zip(clips, answers)])
    config = SpeechTrainingParams(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=0,
                                  checkpoint_every=3)
    student = whisper.build_student(teacher)
    log = speech_training.train_student(student, rows, tmp_path, config)
    assert len(log) == 6 and log["loss"].iloc[-1] < log["loss"].iloc[0]
    itself = batches.teacher_forced_fidelity(teacher, rows)
    assert itself["heldout_kl"] < 1e-4 and itself["top1_agreement"] == 1.0
    assert set(log.columns) >= {"ce", "kd", "tokens"}
    longer = SpeechTrainingParams(**{**config.__dict__, "max_steps": 8})
    resumed = speech_training.train_student(whisper.build_student(teacher), rows, tmp_path, longer)
    assert list(resumed["step"]) == list(range(1, 9))
    torch.testing.assert_close(torch.tensor(resumed["loss"][:6].to_numpy()),
                               torch.tensor(log["loss"].to_numpy()))


def test_wer_normalises_numbers_and_punctuation_on_both_sides():
    assert normalize("I have twenty-three apples, Sir!") == normalize("i have 23 apples sir")
    corpus, pairs = word_error_rate(["the cat sat", "a dog"], ["The cat sat.", "the dog ran"])
    assert pairs == [0.0, pytest.approx(2 / 3)] and corpus == pytest.approx(2 / 6)


def test_speech_params_validate_the_teacher_and_the_audio(tmp_path):
    from distill.pipeline import preflight

    params = load_params(None, ["run.task=asr", "run.teacher=whisper-tiny.en"])
    assert params.notebook_parameters("student_training", tmp_path)["decoder_layers"] is None
    assert "lr" in params.notebook_parameters("student_training", tmp_path)
    preflight(params, "x.yaml")
    text_teacher = load_params(None, ["run.task=asr"])  # the text default, smollm2
    with pytest.raises(ParamsError, match="run.teacher: smollm2-135m-instruct is a language model"):
        preflight(text_teacher, "x.yaml")
    with pytest.raises(ParamsError, match="not a Whisper model"):
        (tmp_path / "config.json").write_text('{"model_type": "llama"}')
        preflight(load_params(None, ["run.task=asr", f"run.teacher={tmp_path}"]), "x.yaml")
    missing = load_params(None, ["run.task=asr", "run.teacher=whisper-tiny.en",
                                 f"speech_labelling.audio={tmp_path / 'nowhere'}"])
    with pytest.raises(ParamsError, match="speech_labelling.audio"):
        preflight(missing, "x.yaml")
    with pytest.raises(ParamsError, match="speech_labelling.snr_db"):
        load_params(None, ["speech_labelling.snr_db=[30, 10]"])
