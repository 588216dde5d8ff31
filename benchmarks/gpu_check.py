"""Helpers of benchmarks/gpu_check.sh, one subcommand per step (run that script, not this).

    python benchmarks/gpu_check.py wheels                # the wheel list's requirements
    python benchmarks/gpu_check.py check-wheels [--wheels DIR]   # the list vs pyproject.toml
    python benchmarks/gpu_check.py need --wheels DIR     # listed packages this Python lacks
    python benchmarks/gpu_check.py see-packages VENV_PYTHON   # a venv sees this Python's
    python benchmarks/gpu_check.py installed             # what the listed packages are now
    python benchmarks/gpu_check.py teacher OUT           # build the tiny random teacher
    python benchmarks/gpu_check.py params FILE --set section.key=value ...
    python benchmarks/gpu_check.py benchmark --run-dir RUN --teacher OUT --batch-size 32
    python benchmarks/gpu_check.py summary --run-dir RUN [--benchmark JSON]

`wheels`, `need`, `see-packages` and `installed` use the standard library only (and
`packaging` where it is there): they run before distill's dependencies are installed.
`check-wheels` (the dry run's) reads the dependency metadata of this checkout's .venv.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_LIST = ROOT / "benchmarks" / "gpu_check_wheels.txt"
ASSETS = ROOT / "src" / "distill" / "assets"

# The tiny teacher: Llama architecture, random weights, a byte-level BPE trained here on
# the text distill ships. Big enough that pruning (4 of 8 layers, or MLP channels) and
# a batch of 32 on a GPU mean something; small enough to build in seconds on a CPU.
TEACHER = {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8,
           "num_attention_heads": 6, "num_key_value_heads": 2,
           "max_position_embeddings": 2048, "tie_word_embeddings": True}
VOCAB_SIZE = 4096  # the BPE's target; the shipped text gives a few thousand merges
BOS, EOS, PAD, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{%- endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")


# --- the wheel list ----------------------------------------------------------------

def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(text: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    if not match:
        raise ValueError(f"not a requirement: {text!r}")
    return canonical(match.group(1))


def read_wheel_list(path: Path | str = WHEEL_LIST) -> dict:
    """{'requirements': {name: line}, 'installed': [names], 'skip': {name: reason}}."""
    requirements, installed, skip = {}, [], {}
    for line in Path(path).read_text().splitlines():
        text = line.strip()
        if text.startswith("# installed:"):
            installed += [canonical(n) for n in text.split(":", 1)[1].split()]
        elif text.startswith("# skip:"):
            name, _, reason = text.split(":", 1)[1].strip().partition(" ")
            skip[canonical(name)] = reason.strip()
        elif text and not text.startswith("#"):
            requirement = text.split("#", 1)[0].strip()
            requirements[requirement_name(requirement)] = requirement
    return {"requirements": requirements, "installed": installed, "skip": skip}


def pyproject() -> dict:
    """distill's dependencies and build requirements, as requirement strings."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the two arrays, read by hand
        def array(key: str) -> list[str]:
            body = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
            return re.findall(r"\"([^\"]+)\"", re.sub(r"#.*", "", body))
        return {"dependencies": array("dependencies"), "build": array("requires")}
    data = tomllib.loads(text)
    return {"dependencies": data["project"]["dependencies"],
            "build": data["build-system"]["requires"]}


def wheel_files(folder: Path) -> dict[str, str]:
    """{distribution name: file} of the wheels and sdists in `folder`."""
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.endswith(".whl"):
            found[canonical(path.name.split("-")[0])] = path.name
        elif path.name.endswith((".tar.gz", ".zip")):
            found[canonical(re.sub(r"\.(tar\.gz|zip)$", "", path.name).rsplit("-", 1)[0])] = \
                path.name
    return found


def satisfied(requirement: str) -> bool:
    """An installed distribution meets `requirement` (its version specifier when
    `packaging` is there to read it; else any version)."""
    try:
        version = metadata.version(requirement_name(requirement))
    except metadata.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def dependency_closure(roots: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Every distribution `roots` need, from the installed metadata: ({name: the one
    that first required it}, names that are not installed here). Markers are evaluated
    for this interpreter, with the extras asked for."""
    from packaging.requirements import Requirement

    parents: dict[str, str | None] = {}
    extras_seen: dict[str, frozenset] = {}
    absent: list[str] = []
    stack = [(Requirement(r), None) for r in roots]
    while stack:
        requirement, parent = stack.pop()
        name, extras = canonical(requirement.name), frozenset(requirement.extras)
        if name in extras_seen and extras <= extras_seen[name]:
            continue
        parents.setdefault(name, parent)
        extras_seen[name] = extras_seen.get(name, frozenset()) | extras
        try:
            declared = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            absent.append(name)
            continue
        for text in declared:
            child = Requirement(text)
            wanted = sorted(extras_seen[name]) or [""]
            if child.marker and not any(child.marker.evaluate({"extra": e}) for e in wanted):
                continue
            stack.append((child, name))
    return parents, sorted(set(absent))


def check_wheels(args) -> int:
    """The wheel list against pyproject.toml and the metadata installed here: fail on a
    package distill does not need, and on one it needs that the list misses."""
    listing, project = read_wheel_list(args.list), pyproject()
    listed = listing["requirements"]
    build = {requirement_name(r) for r in project["build"]}
    direct = {requirement_name(r) for r in project["dependencies"]}
    errors = [f"skip: {name} is not a dependency in pyproject.toml"
              for name in listing["skip"] if name not in direct]
    base, base_absent = dependency_closure(listing["installed"])
    runtime, runtime_absent = dependency_closure(
        [r for r in project["dependencies"] if requirement_name(r) not in listing["skip"]])
    for name in sorted(set(base_absent) | set(runtime_absent)):
        errors.append(f"{name}: not installed in {sys.prefix}, so its dependencies are "
                      "unknown; run `make env` first")
    needed = set(runtime) - set(base)
    for name in listed:
        if name not in runtime and name not in build:
            errors.append(f"{name}: listed, but distill does not need it (not in the "
                          "dependency closure of pyproject.toml, not a build requirement)")
    for name in sorted(needed - set(listed)):
        via = "a dependency in pyproject.toml" if runtime[name] is None \
            else f"through {runtime[name]}"
        errors.append(f"{name}: distill needs it ({via}) and the GPU machine does not have "
                      f"it; add it to {Path(args.list).name}")
    also_installed = sorted(n for n in listed if n in base)
    shown = Path(args.list).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    print(f"wheel list {shown}: {len(listed)} packages; distill needs "
          f"{len(needed)} beyond {', '.join(listing['installed'])} and their dependencies "
          f"({len(base)} packages); skipped: {', '.join(listing['skip']) or 'none'}")
    if also_installed:
        print(f"  listed though {', '.join(listing['installed'])} bring them (installed only "
              f"where missing): {', '.join(also_installed)}")
    folder = Path(args.wheels)
    if folder.is_dir():
        files = wheel_files(folder)
        absent = [name for name in listed if name not in files]
        print(f"  wheels folder {folder}: {len(files)} files; listed but absent: "
              f"{', '.join(absent) or 'none'}")
    else:
        print(f"  wheels folder {folder}: not here (fine for a dry run); all "
              f"{len(listed)} listed packages are absent from it")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


def need(args) -> int:
    """Print the listed packages this Python lacks (space-separated, for pip); exit 3
    naming those the wheels folder has no file for, 4 when a package the machine is
    meant to have already is missing."""
    listing, project = read_wheel_list(), pyproject()
    build = {requirement_name(r) for r in project["build"]}
    absent_base = [n for n in listing["installed"] if not satisfied(n)]
    if absent_base:
        print(f"gpu_check: {', '.join(absent_base)} must already be installed for "
              f"{sys.executable} (the GPU machine's own packages); they are not",
              file=sys.stderr)
        return 4
    wanted = [req for name, req in listing["requirements"].items()
              if name not in build and not satisfied(req)]
    files = wheel_files(Path(args.wheels))
    missing = [requirement_name(req) for req in wanted if requirement_name(req) not in files]
    if missing:
        print(f"gpu_check: missing wheel(s) in {args.wheels}: {', '.join(missing)}\n"
              f"  prepare them on a machine with an index and the GPU machine's Python: "
              f"pip wheel --no-deps -w {args.wheels} {' '.join(missing)}", file=sys.stderr)
        return 3
    print(f"gpu_check: {len(wanted)} of {len(listing['requirements'])} listed packages to "
          f"install from {args.wheels}", file=sys.stderr)
    print(" ".join(wanted))
    return 0


def installed(args) -> int:
    """The listed packages' versions now, and where distill is imported from."""
    listing = read_wheel_list()
    rows = []
    for name in [*listing["installed"], *listing["requirements"]]:
        try:
            rows.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            rows.append(f"{name} (absent)")
    print("installed: " + " ".join(rows))
    found = subprocess.run([sys.executable, "-c", "import distill; print(distill.__file__)"],
                           capture_output=True, text=True)
    print(f"distill: {found.stdout.strip() or found.stderr.strip().splitlines()[-1]}")
    return found.returncode


def see_packages(args) -> int:
    """Make the venv of `args.python` see this interpreter's packages (a .pth file that
    adds its site-packages after the venv's own), and check it imports what the GPU
    machine is meant to have."""
    import site

    folders = [*site.getsitepackages(),
               *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    purelib = subprocess.run(
        [args.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"import site; site.addsitedir({folder!r})\n" for folder in folders
             if Path(folder).is_dir()]
    (Path(purelib) / "_gpu_check_base.pth").write_text("".join(lines))
    modules = [canonical(n).replace("-", "_") for n in read_wheel_list()["installed"]]
    found = subprocess.run([args.python, "-c", f"import {', '.join(modules)}"],
                           capture_output=True, text=True)
    print(f"venv {purelib} sees {len(lines)} site folder(s) of {sys.executable}"
          + ("" if found.returncode == 0 else f"; but: {found.stderr.strip().splitlines()[-1]}"))
    return found.returncode


# --- the tiny teacher ----------------------------------------------------------------

def tokenizer_texts() -> list[str]:
    """The text distill ships: prose, generic openings, prompts and their references."""
    texts = [(ASSETS / name).read_text() for name in
             ("corpus.txt", "generic_seeds.txt", "validation_prose.txt")]
    for line in (ASSETS / "prompts.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            texts += [value for value in row.values() if isinstance(value, str)]
            texts += [m["content"] for m in row.get("messages") or [] if "content" in m]
    return texts


def build_tokenizer():
    """A byte-level BPE with a ChatML template, trained offline in a fraction of a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=[END_OF_TEXT, BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(tokenizer_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, chat_template=CHAT_TEMPLATE,
                                   model_max_length=TEACHER["max_position_embeddings"])


def build_teacher(out: Path, seed: int = 0) -> dict:
    """Write a random-initialised Llama teacher in Hugging Face format to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TEACHER)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "---\nlicense: apache-2.0\ntags: [distill, gpu-check]\n---\n"
        "# tiny random teacher\n\nBuilt by benchmarks/gpu_check.py: Llama architecture, "
        "random weights, a BPE trained on distill's shipped text. For checks only.\n")
    return {"parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}
                              .values()),
            "vocab_size": len(tokenizer), "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size, "mb": sum(
                p.stat().st_size for p in out.iterdir() if p.is_file()) / 2**20}


def teacher(args) -> int:
    """Build the teacher, then load it as the pipeline will and generate a few tokens."""
    started = time.perf_counter()
    out = Path(args.out).resolve()
    facts = build_teacher(out, args.seed)
    built = time.perf_counter() - started
    from distill.lm.data import encode_chat, load_prompts
    from distill.lm.generation import generate
    from distill.lm.models import check_model_name, load_model

    check_model_name(str(out))
    model, tokenizer = load_model(str(out))
    prompts = [encode_chat(tokenizer, p["messages"]) for p in load_prompts()[:2]]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=4, top_k_logprobs=20)
    assert all(len(o["topk_ids"][0]) == 20 for o in outputs), outputs
    print(f"teacher {out}: {facts['parameters'] / 1e6:.1f} M parameters, "
          f"{facts['layers']} layers, width {facts['hidden_size']}, vocabulary "
          f"{facts['vocab_size']}, {facts['mb']:.0f} MB, built in {built:.1f} s; loaded by "
          f"distill.lm.models.load_model, prompt of {len(prompts[0])} tokens, generated "
          f"{[tokenizer.decode(o['completion_ids']) for o in outputs]}")
    return 0


def params(args) -> int:
    """The params with the overrides, validated as `distill run` does before a run."""
    from distill.core.params import ParamsError, load_params
    from distill.pipeline import preflight

    try:
        loaded = load_params(args.source, args.overrides)
        preflight(loaded, args.source)
    except ParamsError as error:
        print(f"gpu_check: invalid params: {error}", file=sys.stderr)
        return 2
    training = loaded.student_training
    print(f"params {args.source} with {len(args.overrides)} overrides: valid; teacher "
          f"{loaded.run.teacher}, precision {loaded.run.precision}, output_dir "
          f"{loaded.run.output_dir}, student {training.student} ({training.prune_recipe}, "
          f"size {training.student_size}), corpus {loaded.evaluation.corpus}")
    return 0


# --- the benchmark -------------------------------------------------------------------

def train_child(run_dir: Path, teacher_dir: str, source: str, precision: str, head: str,
                steps: int, batch_size: int) -> dict:
    """Training tokens/s and peak memory of one configuration, in this process (as
    benchmarks/training_throughput.py's train_once, on the run's samples and teacher).
    `head`: chunked (the LM head projected with the loss, distill's default) or whole."""
    import torch

    from distill.core.measure import peak_memory_mb
    from distill.core.params import StudentTrainingParams
    from distill.lm.models import load_model, prune_layers
    from distill.lm.samples import SHARD_PREFIXES, build_examples, read_samples
    from distill.training import batch_loss, train

    if head == "whole":
        batch_loss.CHUNK_HEAD = False
    teacher_model, tokenizer = load_model(teacher_dir)
    student = prune_layers(teacher_model)
    if source == "topk":
        teacher_model = None
    # every sample of the run, all sources and splits: only throughput is measured here
    examples = build_examples(read_samples(run_dir, sources=tuple(SHARD_PREFIXES)),
                              need_topk=source == "topk")
    config = StudentTrainingParams(
        epochs=1, max_steps=steps, batch_size=batch_size, grad_accum=1, lr=1e-4,
        warmup_steps=1, weight_decay=0.0, max_grad_norm=1.0, mixed_precision=precision,
        checkpoint_every=10**9, ce_weight=0.0, kd_weight=1.0, temperature=1.0,
        kd_source=source, validation_size=0)
    with tempfile.TemporaryDirectory() as scratch:
        log = train(student, examples, Path(scratch), config, seed=0, teacher=teacher_model,
                    tokenizer=tokenizer)
    timed = log.iloc[1:] if len(log) > 1 else log  # the first step warms up
    return {"kind": "training", "source": source, "precision": precision, "head": head,
            "batch_size": batch_size, "steps": len(timed), "examples": len(examples),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "tokens_per_second": float(timed["tokens"].sum() / timed["seconds"].sum()),
            "peak_memory_mb": float(max(log["peak_memory_mb"].max(), peak_memory_mb()))}


def sampling_child(run_dir: Path, teacher_dir: str, precision: str, batch_size: int,
                   max_new_tokens: int) -> dict:
    """distill's decode loop with the teacher on the GPU (stage 01 leaves it on the CPU):
    the run's chat prompts, top-20 log-probs, greedy."""
    import torch

    from distill.core.measure import peak_memory_mb
    from distill.core.precision import weights_dtype
    from distill.lm.generation import generate_all
    from distill.lm.models import load_model
    from distill.lm.samples import read_samples

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(teacher_dir, dtype=weights_dtype(precision))
    model.to(device)
    prompts = [[int(i) for i in ids] for ids in read_samples(run_dir)["prompt_ids"]]
    generate_all(model, tokenizer, prompts[:2], 2, max_new_tokens=4)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = generate_all(model, tokenizer, prompts, batch_size,
                           max_new_tokens=max_new_tokens, top_k_logprobs=20)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(o["completion_ids"]) for o in outputs)
    return {"kind": "sampling", "source": "teacher", "precision": precision, "head": "-",
            "batch_size": batch_size, "prompts": len(prompts), "device": device,
            "tokens_per_second": tokens / seconds, "peak_memory_mb": peak_memory_mb()}


def benchmark(args) -> int:
    """Each configuration in its own process, so its peak memory is its own."""
    if args.child:
        kind, *rest = args.child
        if kind == "sampling":
            result = sampling_child(Path(args.run_dir), args.teacher, rest[0], args.batch_size,
                                    args.max_new_tokens)
        else:
            result = train_child(Path(args.run_dir), args.teacher, *rest, args.steps,
                                 args.batch_size)
        print("RESULT " + json.dumps(result))
        return 0
    configs = [c.split(":") for c in args.configs.split(",") if c]
    if args.sampling:
        configs.append(["sampling", args.sampling])
    rows, failed = [], 0
    for config in configs:
        child = ["sampling", config[1]] if config[0] == "sampling" else \
            ["train", config[0], config[1], config[2] if len(config) > 2 else "chunked"]
        command = [sys.executable, __file__, "benchmark", "--run-dir", args.run_dir,
                   "--teacher", args.teacher, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens),
                   "--child", *child]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
        if result.returncode or not lines:
            failed += 1
            print(f"benchmark {':'.join(config)} failed (exit {result.returncode}):\n"
                  + "\n".join((result.stdout + result.stderr).splitlines()[-25:]),
                  file=sys.stderr)
            continue
        rows.append({**json.loads(lines[-1][len("RESULT "):]),
                     "wall_seconds": round(time.perf_counter() - started, 1)})
        row = rows[-1]
        print(f"benchmark {row['kind']:<8} {row['source']:<7} {row['precision']:<5} "
              f"{row['head']:<7} batch "
              f"{row['batch_size']} on {row['device']}: {row['tokens_per_second']:9.0f} "
              f"tokens/s, peak {row['peak_memory_mb']:6.0f} MB ({row['wall_seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if failed else 0


# --- the summary ---------------------------------------------------------------------

def summary(args) -> int:
    """One summary of the run folder, the benchmark and the script's step times."""
    import pandas as pd
    import torch

    run_dir = Path(args.run_dir) if args.run_dir else None

    def read(name: str) -> dict:
        path = run_dir / name if run_dir else None
        return json.loads(path.read_text()) if path and path.exists() else {}

    manifest, stats, metrics = read("manifest.json"), read("sampling_stats.json"), \
        read("metrics.json")
    bench = json.loads(Path(args.benchmark).read_text()) \
        if args.benchmark and Path(args.benchmark).exists() else []
    lines = []

    def add(label: str, text: str) -> None:
        lines.append(f"{label:<34} {text}")

    if torch.cuda.is_available():
        add("GPU", f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})")
    else:
        add("GPU", f"none visible to torch {torch.__version__}")
    environment = manifest.get("environment") or {}
    if environment:
        add("device in the run's manifest", str(environment.get("device")))
    if manifest.get("precision"):
        chosen = manifest["precision"]
        add("run precision", f"{chosen.get('choice')} (requested {chosen.get('requested')})")
    if args.steps_file and Path(args.steps_file).exists():
        for line in Path(args.steps_file).read_text().splitlines():
            step, seconds, status = line.split("\t")
            add(f"script step {step}", f"{float(seconds):7.1f} s  {status}")
    stages = manifest.get("stages") or {}
    order = ("teacher_sampling", "student_training", "evaluation")  # distill.core.params.STAGES
    rank = {stage: index for index, stage in enumerate(order)}
    stages = {s: stages[s] for s in sorted(stages, key=lambda s: rank.get(s, len(order)))}
    for stage, info in stages.items():
        add(f"stage {stage}", f"{info.get('seconds', float('nan')):7.1f} s  {info.get('status')}")
    if stages:
        add("stages total", f"{sum(i.get('seconds', 0) for i in stages.values()):7.1f} s")
    if stats:
        rate = stats.get("tokens_per_second")
        add("sampling, chat (01)", f"{rate:.0f} tokens/s" if rate else "nothing sampled")
        for source, info in (stats.get("sources") or {}).items():
            seconds = info.get("seconds") or 0
            add(f"sampling, {source} (01)", f"{info.get('tokens', 0) / seconds:.0f} tokens/s"
                if seconds else "nothing sampled")
    log_path = run_dir / "train_log.csv" if run_dir else None
    if log_path and log_path.exists():
        log = pd.read_csv(log_path)
        timed = log.iloc[1:] if len(log) > 1 else log
        add("training in the run (02)",
            f"{timed['tokens'].sum() / timed['seconds'].sum():.0f} tokens/s over "
            f"{len(log)} steps, peak memory {log['peak_memory_mb'].max():.0f} MB "
            "(train_log.csv)")
    for name, speed in (metrics.get("speed") or {}).items():
        add(f"generation, {name} (03)",
            f"{speed.get('generation_tokens_per_second', float('nan')):.0f} tokens/s")
    for row in bench:
        add(f"benchmark {row['kind']} {row['source']} {row['precision']} {row['head']}",
            f"{row['tokens_per_second']:.0f} tokens/s at batch {row['batch_size']} on "
            f"{row['device']}, peak GPU memory {row['peak_memory_mb']:.0f} MB"
            if row["device"] == "cuda" else
            f"{row['tokens_per_second']:.0f} tokens/s, peak RSS {row['peak_memory_mb']:.0f} MB")
    if args.teacher:
        from distill.lm.models import load_model

        placed = load_model(args.teacher)[0].device
        add("distill.lm.models.load_model places on", f"{placed} (stages 01 and 03 sample and "
            f"score with the model there; only 02's training moves to the GPU)"
            if placed.type == "cpu" else str(placed))
    print("\n== gpu_check summary")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"lines": lines, "manifest_stages": stages, "sampling_stats": stats,
             "metrics_speed": metrics.get("speed"), "benchmark": bench}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wheels", help="print the wheel list's requirements, one a line")
    check = commands.add_parser("check-wheels", help="the wheel list vs pyproject.toml")
    check.add_argument("--wheels", default=str(ROOT.parent / "wheels"))
    check.add_argument("--list", default=str(WHEEL_LIST),
                       help="the wheel list to check (default: %(default)s)")
    needed = commands.add_parser("need", help="listed packages this Python lacks")
    needed.add_argument("--wheels", required=True)
    commands.add_parser("installed", help="versions of the listed packages now")
    see = commands.add_parser("see-packages", help="let a venv see this Python's packages")
    see.add_argument("python", help="the venv's python")
    build = commands.add_parser("teacher", help="build the tiny random teacher")
    build.add_argument("out")
    build.add_argument("--seed", type=int, default=0)
    validate = commands.add_parser("params", help="validate params with overrides")
    validate.add_argument("source")
    validate.add_argument("--set", dest="overrides", action="append", default=[])
    bench = commands.add_parser("benchmark", help="training (and sampling) throughput")
    bench.add_argument("--run-dir", required=True)
    bench.add_argument("--teacher", required=True)
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--max-new-tokens", type=int, default=64)
    bench.add_argument("--configs", default="topk:bf16,online:bf16,topk:fp32,topk:bf16:whole",
                       help="source:autocast[:whole], as benchmarks/training_throughput.py")
    bench.add_argument("--sampling", default="bf16",
                       help="also time sampling on the GPU in this precision ('' skips it)")
    bench.add_argument("--json")
    bench.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    report = commands.add_parser("summary", help="one summary of a run and the benchmark")
    report.add_argument("--run-dir")
    report.add_argument("--benchmark")
    report.add_argument("--teacher")
    report.add_argument("--steps-file")
    report.add_argument("--json")
    args = parser.parse_args(argv)
    if args.command == "wheels":
        print("\n".join(read_wheel_list()["requirements"].values()))
        return 0
    return {"check-wheels": check_wheels, "need": need, "installed": installed,
            "see-packages": see_packages,
            "teacher": teacher, "params": params, "benchmark": benchmark,
            "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
