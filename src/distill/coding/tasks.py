"""Code tasks: a function to write, judged by running hidden tests.

A task is a row with `prompt` (a signature and docstring, no body), `entry_point` (the
function or class the tests call) and `tests` (Python statements that assert, as one
text or a list of lines), plus optional `id` and `kind`. The built-in set
(`prompts: code`, `assets/code_tasks.jsonl`) holds 160 tasks of 8 kinds, written for
distill; any .jsonl file of rows in this form works the same way. The teacher sees the
prompt in a short instruction (`instruction`); the tests stay hidden from every model.
"""

from __future__ import annotations

import json
import math
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..core.runs import atomic_file
from ..lm.data import PromptError, register_prompt_set, register_row_kind
from . import observe, probe, sandbox

INSTRUCTION = ("Complete this Python code. Reply with the complete code in one ```python "
               "block.\n\n```python\n{prompt}```")
FENCED = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


class TaskError(PromptError):
    """A code task row is malformed; the message says which row and field."""


def is_code_task(row: dict) -> bool:
    return row.get("entry_point") is not None and row.get("tests") is not None


def task_fields(row: dict, where: str) -> dict:
    """{'prompt', 'entry_point', 'tests'} of a code-task row, checked."""
    prompt, entry_point, tests = row.get("prompt"), row.get("entry_point"), row.get("tests")
    if isinstance(tests, list) and all(isinstance(line, str) for line in tests):
        tests = "\n".join(tests) + "\n"
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskError(f"{where}: a code task needs a non-empty 'prompt' (its signature and "
                        "docstring)")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise TaskError(f"{where}: 'entry_point' must name the function or class the tests "
                        f"call; got {entry_point!r}")
    if not isinstance(tests, str) or "assert" not in tests:
        raise TaskError(f"{where}: 'tests' must be Python statements with at least one assert "
                        "(a text or a list of lines)")
    try:
        observe.convert(tests)  # the answer is judged on these observations: refuse early
    except observe.Unsupported as error:
        raise TaskError(f"{where}: 'tests' cannot be judged outside the answer's process: "
                        f"{error}") from None
    return {"prompt": prompt, "entry_point": entry_point, "tests": tests}


def read_code_task(row: dict, where: str, prompt_field: str) -> tuple[dict, dict] | None:
    """A prompt row that is a code task, as `distill.lm.data.load_prompts` reads it: the
    instruction becomes its prompt text, and the task goes under 'code'."""
    if not is_code_task(row):
        return None
    code = task_fields(row, where)
    return {**row, prompt_field: instruction(code["prompt"]), "messages": None}, {"code": code}


register_prompt_set("code", "code_tasks.jsonl", "the built-in code tasks")
register_row_kind(read_code_task)


def instruction(prompt: str) -> str:
    """The user message that asks for a task's code."""
    return INSTRUCTION.format(prompt=prompt if prompt.endswith("\n") else prompt + "\n")


def extract_code(answer: str, task: dict) -> str:
    """The program to test, from an answer: the fenced block that defines the entry point
    (else every fenced block; else the bare answer). An answer that does not define the
    entry point (a body alone) is read as the rest of the task's prompt."""
    blocks = FENCED.findall(answer)
    defines = re.compile(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(task['entry_point'])}\b",
                         re.MULTILINE)
    code = next((b for b in blocks if defines.search(b)), "\n".join(blocks) if blocks else answer)
    if defines.search(code):
        return code
    lines = [line for line in code.splitlines() if line.strip()]
    body = code if lines and lines[0][:1].isspace() else "".join(
        f"    {line}\n" for line in code.splitlines())
    return task["prompt"] + body


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), the chance
    that at least one of k answers drawn without replacement from the n passes."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} answers per task; got {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - math.prod(1 - k / i for i in range(n - correct + 1, n + 1))


def write_run_tasks(path: Path, prompts: list[dict]) -> int:
    """Write the code tasks among `prompts` (their hidden tests) to `path`, one JSON row
    each, for stage 03; returns how many."""
    rows = [{"prompt_id": p["prompt_id"], "kind": p["kind"], **p["code"]}
            for p in prompts if p.get("code")]
    if rows:
        with atomic_file(path) as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return len(rows)


def read_run_tasks(path: Path) -> dict[str, dict]:
    """{prompt_id: task} from `write_run_tasks`' file; {} where there is none."""
    if not Path(path).is_file():
        return {}
    rows = (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    return {row["prompt_id"]: row for row in rows}


def run_answers(answers: list[str], tasks: list[dict], limits: sandbox.Limits,
                workers: int = 2, desc: str = "running code") -> list[sandbox.Outcome]:
    """Each answer's code with its task's tests, in the sandbox, `workers` at a time (each
    worker its own uid, so one answer's processes never count against another's). Says
    loudly first what the sandbox cannot hold here (`probe.warn`). An answer the sandbox
    itself fails on is that answer's `sandbox_error`; the others go on."""
    probe.warn(limits)
    slots = queue.SimpleQueue()
    for slot in range(workers):
        slots.put(slot)

    def one(job: tuple[str, dict]) -> sandbox.Outcome:
        answer, task = job
        slot = slots.get()
        try:
            return sandbox.run(extract_code(answer, task), task["tests"], limits, slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(one, zip(answers, tasks)), total=len(tasks), desc=desc,
                         unit="task"))
