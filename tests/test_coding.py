"""Code tasks: the built-in set, user task files, code extraction, pass@k, the judge's
tables, and the sandbox: each way model-written code can misbehave is contained and
recorded as its failure kind, and the runs after it go on."""

import ast
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from distill.coding import cleanup, judge, observe, probe, sandbox, tasks
from distill.lm import data

QUICK = sandbox.Limits(timeout_s=2.0)


# --- the task set ----------------------------------------------------------------------

def test_the_built_in_set_has_150_tasks_of_8_kinds_each_with_3_asserts():
    prompts = data.load_prompts("code")
    kinds = pd.Series([p["kind"] for p in prompts]).value_counts()
    assert len(prompts) >= 150 and len(kinds) >= 8 and kinds.min() >= 15
    assert {"string", "list", "arithmetic", "parsing", "recursion", "dictionaries", "classes",
            "edge_cases"} <= set(kinds.index)
    assert len({p["code"]["entry_point"] for p in prompts}) == len(prompts)  # no near-copies
    for prompt in prompts:
        code = prompt["code"]
        assert code["tests"].count("assert ") >= 3, prompt["prompt_id"]
        assert code["prompt"] in prompt["messages"][-1]["content"]  # the model sees the prompt,
        assert code["tests"] not in prompt["messages"][-1]["content"]  # never the tests


HARNESS_RUNNER = """
import json, os, sys
harness = {"__name__": "harness"}
exec(open(sys.argv[1]).read(), harness)
texts = []
for solution, probe in json.load(sys.stdin):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the harness's own process, as in the sandbox, without the confinement
        os.close(read)
        os.dup2(write, 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        harness["main"](solution, probe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as reports:
        texts.append(reports.read())
    os.waitpid(pid, 0)
print(json.dumps(texts))
"""


def harness_reports(jobs: list[tuple[str, str]]) -> list[str]:
    """What harness.py reports for each (solution, probe), run in plain forked processes of
    one small interpreter (fast; the sandbox path is tested below)."""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", HARNESS_RUNNER,
                           str(sandbox.HERE / "harness.py")], input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_every_built_in_task_passes_its_solution_and_fails_an_empty_body():
    """All 160, judged as the sandbox judges: the probe's reports against the observations
    (the expected values never enter the answer's process)."""
    rows = [json.loads(line)
            for line in data.builtin_path("code_tasks.jsonl").read_text().splitlines()]
    converted = [observe.convert(row["tests"]) for row in rows]
    jobs = [(code, c.probe) for row, c in zip(rows, converted)
            for code in (row["canonical_solution"], row["prompt"] + "    pass\n")]
    texts = harness_reports(jobs)
    for index, (row, c) in enumerate(zip(rows, converted)):
        assert observe.verdict(texts[2 * index], c.observations) == ("passed", ""), row["id"]
        assert observe.verdict(texts[2 * index + 1], c.observations)[0] != "passed", row["id"]
        assert not [n for n in ast.walk(ast.parse(c.probe)) if isinstance(n, ast.Assert)]


def test_tests_become_observations_without_their_expected_values():
    tests = ("x = [3, 1]\n"
             "assert f(x) == 'secret-1' and f([]) is None\n"
             "expected = 'secret-3'\n"
             "assert f(2) == expected\n"
             "assert not g(2)\n"
             "assert h(1) == [2] * 3\n"
             "for bad in ['a', 'b']:\n"
             "    try:\n"
             "        f(bad)\n"
             "    except (ValueError, KeyError):\n"
             "        pass\n"
             "    else:\n"
             "        raise AssertionError('secret-2')\n")
    converted = observe.convert(tests)
    assert "secret" not in converted.probe and "assert" not in converted.probe
    assert [(o.line, o.expected, o.raises) for o in converted.observations] == [
        (2, "secret-1", ()), (2, None, ()), (4, "secret-3", ()), (5, False, ()),
        (6, [2, 2, 2], ()), (8, None, (ValueError, KeyError)), (8, None, (ValueError, KeyError))]
    assert "bad = 'b'" in converted.probe  # the loop is unrolled: a fixed count of reports


@pytest.mark.parametrize("observed, expected, same", [
    (1, True, False), (True, 1, False), (0, False, False), (2, 2.0, True),
    (0.1 + 0.2, 0.3, True), (0.3001, 0.3, False), ("a", "a", True), ([1], (1,), False),
    ({1: "a"}, {True: "a"}, False), ({"k": [1, 2]}, {"k": [1, 2]}, True),
    ({(1, "a")}, {(1, "a")}, True), (None, 0, False), (float("nan"), float("nan"), False),
])
def test_observed_values_compare_type_strictly(observed, expected, same):
    assert observe.same(observed, expected) is same


@pytest.mark.parametrize("tests, says", [
    ("while True:\n    assert f() == 1\n", "line 1: While"),
    ("for i in range(3):\n    assert f(i) == 1\n", "line 1: For"),
    ("x = 1\n", "no assert"),
    ("try:\n    f()\nexcept MyError:\n    pass\nelse:\n    raise AssertionError\n",
     "built-in exception"),
])
def test_tests_without_an_observation_form_are_refused(tmp_path, tests, says):
    with pytest.raises(observe.Unsupported, match=says):
        observe.convert(tests)
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "def f():\n", "entry_point": "f",
                                "tests": tests + "assert f() == 1\n"}) + "\n")
    if says != "no assert":  # the row is refused at load, naming it and the reason
        with pytest.raises(data.PromptError, match=f"mine.jsonl: row 1: .*{says}"):
            data.load_prompts(str(path))


@pytest.mark.parametrize("reports, kind", [
    ('{"n": 0, "value": ["int", "3"]}\n{"end": true}\n', "passed"),
    ('{"n": 0, "value": ["bool", true]}\n{"end": true}\n', "assertion"),
    ('{"end": true}\n', "exception"),  # an end before the observations
    ('{"n": 0, "not_plain": "Always"}\n', "assertion"),
    ('{"n": 1, "value": ["int", "3"]}\n{"end": true}\n', "exception"),
    ('{"n": 0, "value": ["int", "3"]}\n', None),  # no end: the exit status says why
    ("garbage\n", "exception"),
    ('{"stop": "passed", "detail": "x"}\n', "exception"),  # a stop is never a pass
])
def test_the_verdict_trusts_no_report_it_cannot_check(reports, kind):
    observations = observe.convert("assert add(1, 2) == 3\n").observations
    judged = observe.verdict(reports, observations)
    assert (judged[0] if judged else None) == kind


def test_the_split_is_deterministic_and_keeps_the_tests():
    prompts = data.load_prompts("code")
    train, heldout = data.split_prompts(prompts, 48, seed=0)
    again = data.split_prompts(data.load_prompts("code"), 48, seed=0)
    assert [p["prompt_id"] for p in heldout] == [p["prompt_id"] for p in again[1]]
    assert len(heldout) == 48 and len(train) == len(prompts) - 48
    assert not {p["prompt_id"] for p in heldout} & {p["prompt_id"] for p in train}


def test_a_user_task_file_in_the_jsonl_form(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "def twice(x):\n    \"\"\"2x.\"\"\"\n",
                                "entry_point": "twice",
                                "tests": ["assert twice(1) == 2", "assert twice(0) == 0"]}) + "\n")
    [prompt] = data.load_prompts(str(path))
    assert prompt["code"]["tests"] == "assert twice(1) == 2\nassert twice(0) == 0\n"
    assert "def twice(x):" in prompt["messages"][0]["content"]
    written = tasks.write_run_tasks(tmp_path / "code_tasks.jsonl", [prompt, {"prompt_id": "x"}])
    assert written == 1
    expected = {"prompt_id": prompt["prompt_id"], "kind": "unknown", **prompt["code"]}
    assert tasks.read_run_tasks(tmp_path / "code_tasks.jsonl") == {prompt["prompt_id"]: expected}
    assert tasks.read_run_tasks(tmp_path / "none.jsonl") == {}


@pytest.mark.parametrize("row, says", [
    ({"prompt": "def f():\n", "entry_point": "f g", "tests": "assert f()"}, "entry_point"),
    ({"prompt": "def f():\n", "entry_point": "f", "tests": "f()"}, "at least one assert"),
    ({"prompt": "def f():\n", "entry_point": "f", "tests": "assert (f("},
     "not valid Python"),
    ({"prompt": " ", "entry_point": "f", "tests": "assert f()"}, "non-empty 'prompt'"),
])
def test_a_bad_task_row_is_refused_with_its_row_and_field(tmp_path, row, says):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(data.PromptError, match=f"bad.jsonl: row 1: .*{says}"):
        data.load_prompts(str(path))


# --- extraction and pass@k -------------------------------------------------------------

TASK = {"prompt": 'def add(a, b):\n    """Sum."""\n', "entry_point": "add",
        "tests": "assert add(1, 2) == 3\n"}


@pytest.mark.parametrize("answer, expected", [
    ("Here:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.",
     "def add(a, b):\n    return a + b\n"),
    ("```python\nimport math\n```\n\n```py\ndef add(a, b):\n    return a + b\n```",
     "def add(a, b):\n    return a + b\n"),  # the block that defines the entry point
    ("def add(a, b):\n    return a + b", "def add(a, b):\n    return a + b"),  # bare
    ("```python\ndef add(a, b):\n    return a +", "def add(a, b):\n    return a +"),  # cut off
    ("    return a + b\n", TASK["prompt"] + "    return a + b\n"),  # a body alone
    ("return a + b", TASK["prompt"] + "    return a + b\n"),
])
def test_code_is_extracted_from_an_answer(answer, expected):
    assert tasks.extract_code(answer, TASK) == expected


def test_pass_at_k_is_the_unbiased_estimator():
    assert tasks.pass_at_k(5, 0, 1) == 0 and tasks.pass_at_k(5, 5, 5) == 1
    assert tasks.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for n, c, k in ((10, 3, 5), (20, 1, 10), (7, 2, 3)):
        assert tasks.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    with pytest.raises(ValueError, match="at least 5 answers"):
        tasks.pass_at_k(3, 1, 5)


def test_the_judge_tables():
    rows = [("t", "a", "string", i, o) for i, o in enumerate(["passed", "assertion", "passed",
                                                               "passed", "timeout", "passed"])]
    rows += [("t", "b", "list", i, o) for i, o in enumerate(["syntax_error"] + ["assertion"] * 5)]
    rows += [("s", p, k, 0, "assertion") for p, k in (("a", "string"), ("b", "list"))]
    results = pd.DataFrame(rows, columns=["model", "prompt_id", "kind", "answer", "outcome"])
    results["seconds"] = 0.1
    rates = judge.pass_rates(results)
    assert rates.loc["t", "pass@1_greedy"] == 0.5 and rates.loc["s", "pass@1_greedy"] == 0
    assert rates.loc["t", "pass@1"] == pytest.approx((3 / 5 + 0) / 2)
    assert rates.loc["t", "pass@5"] == pytest.approx((1 + 0) / 2)
    assert "pass@10" not in rates  # only 5 sampled answers per task
    assert list(judge.by_kind(results).index) == ["string", "list"]  # easiest first
    kinds = judge.failure_kinds(results)
    assert list(kinds.columns) == ["passed", "assertion", "syntax_error", "timeout"]
    assert kinds.loc["t"].sum() == 12 and kinds.loc["s", "assertion"] == 2


# --- the sandbox -----------------------------------------------------------------------

@pytest.mark.parametrize("code, kind, detail", [
    ("def add(a, b):\n    return a + b\n", "passed", ""),
    ("def add(a, b):\n    return a - b\n", "assertion",
     "tests line 1: assert add(1, 2) == 3: got -1"),
    ("def add(a, b)\n    return a + b\n", "syntax_error", "SyntaxError"),
    ("def add(a, b):\n    return a / 0\n", "exception", "ZeroDivisionError"),
    ("import sys\nsys.exit(0)\n", "exception", "SystemExit"),
    ("import os\nos._exit(0)\n", "exception", "before its tests finished"),
    ("def add(a, b):\n    return True\n", "assertion", "got True"),  # not the int 3
])
def test_outcomes_are_recorded_by_kind(code, kind, detail):
    outcome = sandbox.run(code, TASK["tests"], QUICK)
    assert outcome.kind == kind and detail in outcome.detail


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found.append(int(entry.name))
        except FileNotFoundError:
            pass
    return found


def test_misbehaving_code_is_contained_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)  # only the sandbox may stop the write, not file permissions
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        answers = {
            "loops": "while True:\n    pass\n",
            "allocates": "hoard = []\nwhile True:\n    hoard.append(bytearray(10**7))\n",
            "forks": "import os\nwhile True:\n    os.fork()\n",
            "writes": f"open({str(outside / 'escaped.txt')!r}, 'w').write('x')\n",
            "reads the environment": "import os\n"
                                     "assert 'OPENAI_API_KEY' not in os.environ\n"
                                     "assert set(os.environ) <= {'PATH', 'HOME', 'LANG'}\n"
                                     "def add(a, b):\n    return a + b\n",
            "connects": "import socket\n"
                        f"socket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
            "behaves": "def add(a, b):\n    return a + b\n",
        }
        outcomes = dict(zip(answers, tasks.run_answers(
            [f"```python\n{code}```" for code in answers.values()], [TASK] * len(answers),
            sandbox.Limits(timeout_s=2.0, memory_mb=256))))
    assert outcomes["loops"].kind == "timeout" and outcomes["loops"].seconds < 4
    assert outcomes["allocates"].kind == "memory_limit"
    assert outcomes["forks"].kind == "process_limit"
    assert outcomes["writes"].kind == "exception"  # it does not even see the folder
    assert not (outside / "escaped.txt").exists()
    # its own asserts hold: no key, only the minimal environment
    assert outcomes["reads the environment"].kind == "passed"
    assert outcomes["connects"].kind == "exception"
    assert outcomes["behaves"].kind == "passed"  # the run went on
    if os.geteuid() == 0:  # nothing of a fork bomb outlives its run
        assert not any(_processes_of(sandbox.sandbox_uid(slot)) for slot in range(2))


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, some mechanisms need what root has; "
                    "tests/test_sandbox_attacks.py runs the sandbox as a user")
def test_the_probe_finds_every_mechanism_holding_here_as_root():
    found = probe.mechanisms(QUICK)
    assert {name for name, row in found.items() if not row["holds"]} == set()
    assert set(found) == {"network", "unix sockets", "files seen", "file writes", "folder",
                          "totals", "cleanup", "user", "capabilities", "processes",
                          "environment", "limits"}
    assert "network namespace" in found["network"]["how"]
    assert "PID namespace" in found["processes"]["how"]
    assert "tmpfs" in found["folder"]["how"]
    assert probe.warn(QUICK) == []  # nothing to warn of


def test_the_probe_sees_a_run_left_behind(monkeypatch):
    monkeypatch.setattr(sandbox, "remove_tree", lambda path: None)  # a cleanup that fails
    found = probe.mechanisms.__wrapped__(QUICK)  # measured afresh, not the cached table
    assert not found["cleanup"]["holds"] and "left behind" in found["cleanup"]["how"]
    for left in found["cleanup"]["how"].split("left behind in ")[1].strip("[]").split(", "):
        cleanup.remove_tree(Path(left.strip("'")))
