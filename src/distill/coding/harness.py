"""Runs inside the sandbox, in the answer's own process: the answer's code, then the probe
(the task's tests with every expected value taken out, `observe.convert`), reporting each
observation as one JSON line on the process's original stdout. Standard library only;
never imported by distill: `jail.py` runs it after the process is confined, and a test
may run it as a plain script (`python -I -S harness.py < {"solution":..., "probe":...}`).

Nothing here is trusted. The answer runs in this process and may rewrite any of it or
print anything on the channel; the parent (`verdict`) compares what arrives with the
expected values, which never enter this process. So the reports only have to be useful
for an honest answer.

The wire format, one JSON object a line: {"n": N, "value": V} (V type-tagged: ["none"],
["bool", b], ["int", "digits"], ["float", "repr"], ["str", s], [list|tuple|set|frozenset,
[V...]], ["dict", [[K, V]...]]); {"n": N, "not_plain": type name}; {"n": N, "raised":
the first built-in class of the exception's type}; {"n": N, "returned": true}; then
{"end": true}, or {"stop": kind, "detail": text} where the answer's code or a setup
statement raised. Subclasses of the plain types are sent as their base type's content,
read through the base type's own methods (so an overridden __eq__ or __iter__ is not
consulted); anything else is not plain data.
"""

import builtins
import errno
import json
import os
import sys

MAX_DEPTH = 64


class NotPlain(Exception):
    pass


def encode(value, depth=0):
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deep")
    kind = type(value)  # type() cannot be faked the way isinstance's __class__ can
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if issubclass(kind, int):
        return ["int", int.__repr__(value)]
    if issubclass(kind, float):
        return ["float", float.__repr__(value)]
    if issubclass(kind, str):
        return ["str", str.__getitem__(value, slice(None))]
    if issubclass(kind, dict):
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)]
                         for k, v in dict.items(value)]]
    for base in (list, tuple, set, frozenset):
        if issubclass(kind, base):
            return [base.__name__, [encode(item, depth + 1) for item in base.__iter__(value)]]
    raise NotPlain(kind.__name__)


def builtin_class(error):
    """The first class in the exception's MRO that is the built-in of its name."""
    for cls in type(error).__mro__:
        if cls.__module__ == "builtins" and getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "BaseException"


def stop_kind(error):
    if isinstance(error, MemoryError):
        return "memory_limit"
    if isinstance(error, BlockingIOError) and error.errno == errno.EAGAIN:
        return "process_limit"  # a fork refused at the process limit
    return "exception"


def main(solution, probe):
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the answer prints goes to stderr, not into the reports

    def send(report):
        channel.write(json.dumps(report) + "\n")
        channel.flush()

    def value(number, observed):
        try:
            send({"n": number, "value": encode(observed)})
        except (NotPlain, ValueError) as error:  # ValueError: an int too long to print
            send({"n": number, "not_plain": str(error)[:100]})

    namespace = {"__name__": "solution",  # the answer's `if __name__ == "__main__"` stays off
                 "__value__": value,
                 "__raised__": lambda number, error: send({"n": number,
                                                           "raised": builtin_class(error)}),
                 "__returned__": lambda number: send({"n": number, "returned": True})}
    try:
        code = compile(solution, "solution.py", "exec")
    except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte in the source
        send({"stop": "syntax_error", "detail": f"{type(error).__name__}: {error}"[:500]})
        return
    try:
        exec(code, namespace)
        exec(compile(probe, "tests", "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
        send({"stop": stop_kind(error), "detail": f"{type(error).__name__}: {error}"[:500]})
    else:
        send({"end": True})


if __name__ == "__main__":
    given = json.load(sys.stdin)
    main(given["solution"], given["probe"])
    sys.stdout.flush()
    os._exit(0)  # threads the answer started do not hold the process open
