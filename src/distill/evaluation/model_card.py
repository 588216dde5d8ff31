"""A Hugging Face model card (README.md) for the distilled student folder.

The card makes `outputs/<run>/student/` publishable or servable as it is: YAML
front matter the Hub reads (base_model, license, tags, pipeline), then how the
student was made (from params.yaml and the manifest's environment), its figures
(metrics.json's "models": quality and cost only, so the card is the same on a
re-run), a snippet to use it, and its limitations.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import yaml

from ..core.runs import atomic_file
from ..lm.models import EMBEDDED

MISSING = "–"
_ORDER = {"teacher": 0, "student_init": 1, "student": 2}


def teacher_license(teacher: str) -> str | None:
    """The teacher's license: an embedded teacher's registry entry, else the `license`
    key of a local folder's README.md front matter; None when neither says."""
    if teacher in EMBEDDED:
        return EMBEDDED[teacher].license or None
    readme = Path(teacher).expanduser() / "README.md"
    if not readme.is_file():
        return None
    value = _front_matter(readme.read_text(encoding="utf-8")).get("license")
    return str(value) if value else None


def _front_matter(text: str) -> dict:
    """The YAML between a leading `---` line and the next one; {} when absent or bad."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            try:
                data = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _base_model(teacher: str) -> str:
    """The teacher as the Hub names it: an embedded one's Hub id, a folder's name,
    else the name as given (a Hub id)."""
    if teacher in EMBEDDED:
        return EMBEDDED[teacher].hub_id or teacher
    folder = Path(teacher).expanduser()
    return folder.resolve().name if folder.is_dir() else teacher


def _cell(value) -> str:
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return MISSING
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{float(value):.4g}"
    return str(value).replace("|", "\\|")


def _with_interval(value, bounds) -> str:
    """A figure and its 95% interval, '1.066 [1.01, 1.12]', where the interval is wider
    than nothing."""
    if not bounds or value is None or bounds[0] == bounds[1]:
        return _cell(value)
    return f"{_cell(value)} [{bounds[0]:.3g}, {bounds[1]:.3g}]"


def metrics_table(metrics: dict) -> str:
    """A markdown table, one row per model, one column per figure (their union, in
    first-seen order). `metrics` is metrics.json (its "models" are used, each figure with
    its 95% interval where "intervals" has one) or {model: {figure: value}}."""
    bounds = {}
    if "schema_version" in metrics:  # the whole metrics.json (runs.write_metrics)
        bounds = metrics.get("intervals") or {}
        metrics = metrics.get("models") or {}
    rows = {name: row for name, row in metrics.items() if isinstance(row, dict)}
    # metrics.json stores its keys sorted: teacher, student_init, student first again
    rows = {name: rows[name] for name in sorted(rows, key=lambda n: _ORDER.get(n, 3))}
    if not rows:
        return "No metrics recorded."
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    lines = ["| model | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join([_cell(name), *(_with_interval(row.get(c), bounds.get(name, {})
                                                               .get(c)) for c in columns)]) + " |"
              for name, row in rows.items()]
    return "\n".join(lines)


def speed_summary(metrics: dict) -> str | None:
    """The student's measured speed-ups over the teacher (metrics.json's "speed"), as a
    sentence; None when the run measured none. Ratios, unlike tokens/s, change little
    from run to run on one machine, but they do change between machines."""
    student = (metrics.get("speed") or {}).get("student") or {}
    prefix = "decode_speedup_batch"
    batches = sorted(int(key.removeprefix(prefix)) for key, value in student.items()
                     if key.startswith(prefix) and value is not None)
    figures = [f"{student[f'{prefix}{batch}']:.2f}x at batch {batch}" for batch in batches]
    if not figures:
        return None
    text = ("Greedy decoding of a fixed number of tokens, on the machine that evaluated it: "
            f"{', '.join(figures)} the teacher's tokens/s")
    if student.get("scoring_speedup") is not None:
        text += f"; teacher-forced scoring {student['scoring_speedup']:.2f}x"
    if student.get("assisted_speedup") is not None:
        text += (f". As the teacher's draft model (speculative decoding), the teacher's greedy "
                 f"answers came {student['assisted_speedup']:.2f}x as fast")
    return text + "."


def _get(section: dict, key: str):
    return MISSING if section.get(key) is None else section[key]


def _made(params: dict, environment: dict | None) -> list[str]:
    run = params.get("run") or {}
    sampling = params.get("teacher_sampling") or {}
    training = params.get("student_training") or {}
    transfer = (f"{_get(sampling, 'train_size')} teacher completions (train_size), up to "
                f"{_get(sampling, 'max_new_tokens')} new tokens each")
    for key in ("generic_samples", "documents"):
        if sampling.get(key) is not None:
            transfer += f"; {key}: {sampling[key]}"
    steps = (f"stopped at {training['max_steps']} steps" if training.get("max_steps")
             else "no step cap")
    environment = environment or {}
    commit = environment.get("git_commit") or "unknown"
    if environment.get("git_dirty"):
        commit += " (uncommitted changes)"
    return [
        f"- Pruning recipe: {training.get('prune_recipe') or _get(training, 'student')}",
        f"- Objective: {_get(training, 'kd_loss')} on the teacher's "
        f"{_get(training, 'kd_source')} signal, temperature {_get(training, 'temperature')}",
        f"- Transfer set: {transfer}",
        f"- Training: {_get(training, 'epochs')} epochs, {steps}, learning rate "
        f"{_get(training, 'lr')}, batch size {_get(training, 'batch_size')}",
        f"- Precision: {_get(run, 'precision')}",
        f"- Code: distill at git commit {commit}",
    ]


def usage(chat: bool) -> str:
    """How to run the student with transformers: through its chat template, or (a
    tokenizer without one, such as a base model's) on plain text."""
    if chat:
        prompt = (
            'messages = [{"role": "user", "content": "What is knowledge distillation?"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,\n"
            '                                       return_tensors="pt", return_dict=True)')
    else:  # no chat template: the prompt is plain text, as the suite gave it
        prompt = 'inputs = tokenizer("What is knowledge distillation?\\n", return_tensors="pt")'
    return "\n".join([
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        'folder = "path/to/this/folder"  # or its Hub id once published',
        "tokenizer = AutoTokenizer.from_pretrained(folder)",
        "model = AutoModelForCausalLM.from_pretrained(folder)", prompt,
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], '
        "skip_special_tokens=True))", "```"])


def render_model_card(*, teacher: str, student_name: str, params: dict, metrics: dict,
                      environment: dict | None = None, license: str | None = None,
                      chat: bool = True) -> str:
    """README.md text for the student folder: front matter, how it was made, metrics,
    usage (`chat`: the student's tokenizer has a chat template) and limitations."""
    base = _base_model(teacher)
    front = yaml.safe_dump({"base_model": base, "tags": ["distillation", "distill"],
                            "license": license or "other", "pipeline_tag": "text-generation",
                            "library_name": "transformers"}, sort_keys=False)
    parts = [
        f"---\n{front}---",
        f"# {student_name}",
        f"{student_name} was distilled from the teacher `{base}` with the distill suite: a "
        "smaller student trained to match the teacher's next-token distributions on the "
        "teacher's own completions.",
        "## How it was made", "\n".join(_made(params, environment)),
        "## Metrics", metrics_table(metrics),
        *(["## Speed", speed] if (speed := speed_summary(metrics)) else []),
        "## How to use", usage(chat),
        "## Limitations",
        "The figures above are measured on the suite's held-out prompts and prose, not on "
        "a broad benchmark; the student inherits the teacher's limitations and biases.",
    ]
    return "\n\n".join(parts) + "\n"


def write_model_card(folder: str | Path, **kwargs) -> Path:
    """Write `folder`/README.md (atomically) from render_model_card's keywords; the
    license defaults to the teacher's. Returns the path."""
    if kwargs.get("license") is None:
        kwargs["license"] = teacher_license(kwargs["teacher"])
    if "chat" not in kwargs:  # a tokenizer without a chat template takes plain text
        config = Path(folder) / "tokenizer_config.json"
        kwargs["chat"] = (Path(folder) / "chat_template.jinja").exists() or (
            config.exists() and "chat_template" in json.loads(config.read_text()))
    path = Path(folder) / "README.md"
    with atomic_file(path) as handle:
        handle.write(render_model_card(**kwargs))
    return path
