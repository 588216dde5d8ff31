"""Runs inside the sandbox, beside solution.py and tests.py: the answer's code, then the
task's tests, and the outcome in .result.json. Standard library only; never imported by
distill (`sandbox.run` copies it into the sandbox's folder).

The kinds: passed, syntax_error, assertion, exception, memory_limit (MemoryError at the
address-space limit), process_limit (a fork refused at the process limit). A program that
exits before its tests finish writes nothing, and the parent says why (timeout, killed).
"""

import errno
import json
import os
import sys
import traceback


def record(kind: str, detail: str = "") -> None:
    """Write the outcome atomically: a process killed while writing leaves none."""
    temporary = f".result.{os.getpid()}.tmp"  # a forked copy of this process writes its own
    with open(temporary, "w") as handle:
        json.dump({"kind": kind, "detail": detail[:500]}, handle)
    os.replace(temporary, ".result.json")


def failing_line(error: BaseException) -> str:
    """The last line of tests.py in the traceback: the assert that failed."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "tests.py"]
    return f"tests.py line {frames[-1].lineno}: {frames[-1].line}" if frames else ""


def main() -> None:
    tests = compile(open("tests.py").read(), "tests.py", "exec")
    try:
        solution = compile(open("solution.py").read(), "solution.py", "exec")
    except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte in the source
        record("syntax_error", f"{type(error).__name__}: {error}")
        return
    namespace = {"__name__": "solution"}  # the answer's `if __name__ == "__main__"` stays off
    try:
        exec(solution, namespace)
        exec(tests, namespace)
    except AssertionError as error:
        record("assertion", failing_line(error) or repr(error))
    except MemoryError:
        record("memory_limit", "MemoryError: the address-space limit was reached")
    except BlockingIOError as error:
        kind = "process_limit" if error.errno == errno.EAGAIN else "exception"
        record(kind, f"BlockingIOError: {error}")
    except BaseException as error:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
        record("exception", f"{type(error).__name__}: {error}"[:500])
    else:
        record("passed")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # threads the answer started do not hold the process open
