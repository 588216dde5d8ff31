"""Hostile answers, each of a kind issue 26 found working: none may be counted as passed,
and what each reaches for must stay out of reach. Most are written so that the attack,
if it worked, would make the answer pass (it defines a correct `add` only when it got
what it went for): a pass is an escape. All run in one batch, two at a time, as stage 03
runs answers; a correct answer runs last and must still pass.

To see every outcome: python tests/test_sandbox_attacks.py (as root, from the project)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from distill.coding import cleanup, observe, sandbox, tasks
from distill.lm import data
from test_coding import harness_reports

ADD = {"prompt": "def add(a, b):\n", "entry_point": "add",
       "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"}
ROWS = [json.loads(line) for line in data.builtin_path("code_tasks.jsonl").read_text().splitlines()]
VOWELS = next(row for row in ROWS if row["entry_point"] == "count_vowels")
LIMITS = sandbox.Limits(timeout_s=3.0, memory_mb=256, total_memory_mb=400)
# defines `add` correctly only where the attack above it set `ok`
IF_OK = "\ndef add(a, b):\n    return a + b if ok else None\n"
ALWAYS = ("class Always:\n    def __eq__(self, other):\n        return True\n"
          "    def __ne__(self, other):\n        return False\n"
          "    def __hash__(self):\n        return 0\n"
          "    def __getattr__(self, name):\n        return lambda *a, **k: Always()\n")


def attempt(body: str) -> str:
    """An answer that runs `body` and passes only if it raised nothing."""
    return "ok = False\ntry:\n" + textwrap.indent(body, "    ") + "\n    ok = True\n" \
           "except Exception:\n    pass\n" + IF_OK


FORGERIES = {  # each tries to be counted as passed without computing anything
    "exec made a no-op": "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
                         "def add(a, b):\n    return None\n",
    "settrace rewrites every report": textwrap.dedent("""
        import sys
        def tracer(frame, event, arg):
            if event == "call" and frame.f_code.co_name == "send":
                frame.f_locals["report"].clear()
                frame.f_locals["report"]["end"] = True
            return tracer
        sys.settrace(tracer)
        def add(a, b):
            return None
        """),
    "writes .result.json, then os._exit(0)":
        "import json, os\njson.dump({'kind': 'passed', 'detail': ''}, open('.result.json', 'w'))\n"
        "os._exit(0)\ndef add(a, b):\n    return None\n",
    "patches the report functions and writes the channel itself": textwrap.dedent("""
        import os
        def __value__(n, value):
            os.write(3, ('{"n": %d, "value": ["bool", true]}\\n' % n).encode())
        def add(a, b):
            return True
        """),
    "swaps the harness's code through gc": textwrap.dedent("""
        import gc, os
        def forged(report):
            os.write(3, b'{"end": true}\\n')
        for f in gc.get_objects():
            if callable(f) and getattr(f, "__name__", "") == "send":
                f.__code__ = forged.__code__
        def add(a, b):
            return None
        """),
    "a forked child keeps writing a verdict": textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            for _ in range(300):
                os.write(3, b'{"end": true}\\n')
                open('.result.json', 'w').write('{"kind": "passed", "detail": ""}')
                time.sleep(0.005)
            os._exit(0)
        def add(a, b):
            return None
        """),
    "returns an object whose __eq__ is always true":
        ALWAYS + "def add(a, b):\n    return Always()\n",
    "returns an int subclass whose __eq__ is always true":
        "class S(int):\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return S(7)\n",
}

LOOKUP = textwrap.dedent("""
    import gc, re, sys
    table = {}
    texts = [o for o in gc.get_objects() if type(o) is str and "count_vowels(" in o]
    for name in ("tests.py", "/work/tests.py", "probe.py"):
        try:
            texts.append(open(name).read())
        except OSError:
            pass
    frame = sys._getframe()
    while frame:
        texts += [v for v in frame.f_locals.values() if type(v) is str]
        frame = frame.f_back
    for text in texts:
        for arg, expected in re.findall(r"count_vowels\\((.*?)\\) == (.+)", text):
            table[eval(arg)] = eval(expected)
    def count_vowels(text):
        return table.get(text)
    """)

READ_ASSETS = textwrap.dedent("""
    import glob, json, os
    paths = [{assets!r}]
    for cmdline in glob.glob("/proc/*/cmdline"):
        try:
            for part in open(cmdline, "rb").read().decode(errors="ignore").split("\\0"):
                if "distill" in part:
                    paths.append(part[:part.index("distill")] + "distill/assets/code_tasks.jsonl")
        except OSError:
            pass
    for path in paths:
        try:
            for line in open(path):
                row = json.loads(line)
                if row["entry_point"] == "count_vowels":
                    exec(row["canonical_solution"])
        except (OSError, ValueError):
            pass
    """)


@contextlib.contextmanager
def host_targets(tmp_path: Path):
    """What an answer must not reach: a readable file in a world-open folder, a Unix
    socket file and an abstract socket that record what they receive, a host process."""
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    secret = outside / "secret.txt"
    secret.write_text("secret")
    secret.chmod(0o644)
    received = []
    listeners = []
    for address in (str(outside / "socket"), f"\0distill-test-{uuid.uuid4().hex}"):
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        server.listen()
        if not address.startswith("\0"):
            os.chmod(address, 0o777)
        listeners.append((server, address))

        def accept(server=server):
            try:
                while True:
                    connection, _ = server.accept()
                    received.append(connection.recv(100))
            except OSError:
                pass
        threading.Thread(target=accept, daemon=True).start()
    sleeper = subprocess.Popen(["sleep", "60"])
    yield {"outside": outside, "secret": secret, "received": received, "sleeper": sleeper,
           "sockets": [address for _, address in listeners]}
    sleeper.kill()
    for server, _ in listeners:
        server.close()


@pytest.fixture()
def host(tmp_path):
    with host_targets(tmp_path) as targets:
        yield targets


def reaches(host) -> dict[str, str]:
    unix_path, abstract = host["sockets"]
    return {
        "reads /etc/passwd": attempt("open('/etc/passwd').read()"),
        "reads the project's source": attempt(f"open({str(sandbox.HERE / 'sandbox.py')!r}).read()"),
        "reads the system's temporary folder": attempt(f"open({str(host['secret'])!r}).read()"),
        "lists root's home": attempt("import os\nassert os.listdir('/root') is not None\n"
                                     "open('/root/.bashrc').read()"),
        "reads the host's processes' command lines": attempt(
            "import glob\nassert any(b'pytest' in open(p, 'rb').read()\n"
            "           for p in glob.glob('/proc/*/cmdline'))"),
        "connects to a Unix socket file": attempt(
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})\n"
            "s.sendall(b'escaped')"),
        "connects to an abstract Unix socket": attempt(
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract!r})\n"
            "s.sendall(b'escaped')"),
        "connects over TCP": attempt("import socket\n"
                                     "socket.create_connection(('127.0.0.1', 22), timeout=1)"),
        "writes outside its folder": attempt(
            f"open({str(host['outside'] / 'escaped.txt')!r}, 'w').write('x')"),
        "signals a host process": attempt(f"import os\nos.kill({host['sleeper'].pid}, 9)"),
        "reads the API key": attempt("import os\nassert os.environ['OPENAI_API_KEY']"),
        "holds 900 MB across six processes": attempt(textwrap.dedent("""
            import os, time
            read, write = os.pipe()
            children = []
            for _ in range(6):
                pid = os.fork()
                if pid == 0:
                    hoard = b"x" * (150 * 2**20)
                    os.write(write, b"1")
                    time.sleep(2)
                    os._exit(0)
                children.append(pid)
            os.close(write)
            held = b""
            while chunk := os.read(read, 6):  # until every child has ended or been killed
                held += chunk
            assert len(held) == 6
            """)),
        "writes 12 files of 15 MB": attempt(
            "for i in range(12):\n    open(f'big{i}', 'wb').write(b'x' * (15 * 2**20))"),
        "fork-bombs": "import os\nwhile True:\n    os.fork()\n" + IF_OK.replace("ok", "True"),
        "allocates 2 GB at once": attempt("hoard = bytearray(2 * 2**30)"),
        "prints 100 MB": attempt("import sys\nsys.stdout.write('x' * (100 * 2**20))"),
        "sleeps past the timeout": attempt("import time\ntime.sleep(30)"),
        "leaves a double-forked process behind": attempt(textwrap.dedent(f"""
            import os, time
            if os.fork() == 0:
                if os.fork() == 0:
                    time.sleep(1.5)
                    open({str(host['outside'] / 'late.txt')!r}, 'w').write('x')
                os._exit(0)
            time.sleep(0.1)
            raise RuntimeError("the caller returns at once")
            """)),
        "builds a 2,000-deep tree": textwrap.dedent("""
            import os
            for _ in range(2000):
                os.mkdir("d")
                os.chdir("d")
            os.chmod(".", 0o500)
            def add(a, b):
                return a + b
            """),  # contained means: it passes, and the next answers still run
    }


def run_attacks(host) -> dict[str, sandbox.Outcome]:
    """Every hostile answer and one correct one, in one batch of two workers."""
    hostile = {**FORGERIES, **reaches(host)}
    jobs = [(code, ADD) for code in hostile.values()]
    jobs += [(LOOKUP, VOWELS), (READ_ASSETS.format(assets=str(data.builtin_path(
        "code_tasks.jsonl"))), VOWELS), ("def add(a, b):\n    return a + b\n", ADD)]
    names = [*hostile, "answers from the tests it finds", "runs the reference solution",
             "behaves"]
    return dict(zip(names, tasks.run_answers([f"```python\n{code}```" for code, _ in jobs],
                                             [task for _, task in jobs], LIMITS)))


def test_no_hostile_answer_passes_and_none_reaches_the_host(host, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    start = time.monotonic()
    outcomes = run_attacks(host)
    seconds = time.monotonic() - start
    escaped = {name: (o.kind, o.detail) for name, o in outcomes.items()
               if o.passed and name not in ("behaves", "builds a 2,000-deep tree")}
    assert escaped == {}
    assert outcomes["behaves"].passed and outcomes["builds a 2,000-deep tree"].passed
    assert not any(o.kind == "sandbox_error" for o in outcomes.values())
    assert outcomes["sleeps past the timeout"].kind == "timeout"
    assert outcomes["fork-bombs"].kind in ("process_limit", "killed")
    assert outcomes["allocates 2 GB at once"].detail  # MemoryError at the address-space limit
    assert host["received"] == []  # no byte reached either socket
    assert host["sleeper"].poll() is None  # the host's process lives
    time.sleep(1.6)  # past the double-forked process's write, had it survived
    assert sorted(p.name for p in host["outside"].iterdir()) == ["secret.txt", "socket"]
    assert seconds < 30


def test_a_stub_that_equals_everything_passes_no_built_in_task():
    """The stub that passed 115 of 160 when the tests ran in its process: every task's
    entry point returns (or is) an object equal to anything."""
    stubs, converted = [], []
    for row in ROWS:
        converted.append(observe.convert(row["tests"]))
        stubs.append((ALWAYS + f"def {row['entry_point']}(*args, **kwargs):\n"
                      "    return Always()\n", converted[-1].probe))
    texts = harness_reports(stubs)
    passed = [row["id"] for row, c, text in zip(ROWS, converted, texts)
              if observe.verdict(text, c.observations) == ("passed", "")]
    assert passed == []


def test_one_sandbox_failure_costs_only_its_answer(monkeypatch):
    real, calls = sandbox.cgroups.create, []

    def fails_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("the cgroup could not be made")
        return real(*args)
    monkeypatch.setattr(sandbox.cgroups, "create", fails_once)
    good = "def add(a, b):\n    return a + b\n"
    outcomes = [sandbox.run(good, ADD["tests"], LIMITS) for _ in range(2)]
    assert [o.kind for o in outcomes] == ["sandbox_error", "passed"]
    assert "cgroup could not be made" in outcomes[0].detail


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another uid's files")
def test_cleanup_copes_with_depth_closed_folders_and_another_uids_files(tmp_path):
    top = tmp_path / "left"
    top.mkdir()
    folder = os.open(top, os.O_RDONLY)
    for _ in range(2000):  # deeper than shutil.rmtree's recursion copes with
        os.mkdir("d", dir_fd=folder)
        deeper = os.open("d", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = deeper
    os.close(folder)
    (top / "theirs.txt").write_text("x")
    os.chown(top / "theirs.txt", 54321, 54321)
    (top / "closed").mkdir()
    (top / "closed" / "inside.txt").write_text("x")
    (top / "closed").chmod(0)
    os.symlink("/etc", top / "link")  # removed, never followed
    cleanup.remove_tree(top)
    assert not top.exists() and Path("/etc/passwd").exists()


def test_the_sandbox_as_an_unprivileged_account(tmp_path):
    """As an ordinary user made for this test, with the system's Python: a correct answer
    passes, a hostile one fails, and what cannot hold is said loudly before any answer."""
    # a system interpreter: the account cannot enter root's home, where pyenv keeps ours
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.path.exists(p)), None)
    if os.geteuid() != 0:
        pytest.skip("making an account needs root; run as root to check the user path")
    if not python or not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("needs setpriv, useradd and a system python3 to run as another user")
    user = "distill-sbx"
    if subprocess.run(["id", user], capture_output=True).returncode:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", user], check=True)
    # the sandbox's modules where the account may read them (a checkout under root's
    # home, mode 700, would be out of its reach): a world-readable copy in /tmp
    src = Path(tempfile.mkdtemp(prefix="distill-sbx-src-"))
    os.chmod(src, 0o755)
    shutil.copytree(sandbox.HERE, src / "distill" / "coding",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (src / "distill", src / "distill" / "coding"):
        os.chmod(folder, 0o755)
    script = textwrap.dedent(f"""
        import sys, types
        src = {str(src)!r}
        for name in ("distill", "distill.coding"):  # the sandbox's modules, not the package's
            module = types.ModuleType(name)       # imports (pandas, torch)
            module.__path__ = [src + "/" + name.replace(".", "/")]
            sys.modules[name] = module
        from distill.coding import probe, sandbox
        limits = sandbox.Limits(timeout_s=3)
        print("WARNED", probe.warn(limits), flush=True)
        good = sandbox.run("def add(a, b):\\n    return a + b\\n", "assert add(1, 2) == 3\\n",
                           limits)
        bad = sandbox.run("open('/etc/passwd').read()\\ndef add(a, b):\\n    return a + b\\n",
                          "assert add(1, 2) == 3\\n", limits)
        print("OUTCOMES", good.kind, bad.kind, bad.detail)
        """)
    try:
        done = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}",
                               "--clear-groups", python, "-I", "-c", script],
                              capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(src)
    assert "OUTCOMES passed exception FileNotFoundError" in done.stdout, done.stdout + done.stderr
    warned = next(line for line in done.stdout.splitlines() if line.startswith("WARNED"))
    with open("/proc/self/cgroup") as handle:
        hybrid = "memory" in handle.read()
    if hybrid:  # v1 hierarchies are root's: a user gets no totals, and is told so first
        assert "'totals'" in warned and "WARNING" in done.stderr and "totals" in done.stderr
    assert "files seen" not in warned and "unix sockets" not in warned  # user namespaces


if __name__ == "__main__":  # the table of outcomes, for a report
    import tempfile
    os.environ["OPENAI_API_KEY"] = "sk-secret"
    with host_targets(Path(tempfile.mkdtemp())) as targets:
        for name, outcome in run_attacks(targets).items():
            print(f"{name[:58]:58} {outcome.kind:14} {outcome.seconds:5.2f}s  "
                  f"{outcome.detail[:60]}")
