"""A task's tests as observations: what the answer's process is asked, and, kept here in
the parent, what it must answer.

The answer's process never sees an expected value. `convert` turns a task's `tests`
(assert statements) into a *probe*, the same statements with every expectation taken
out, and a list of `Observation`s that say what each numbered report must be:

- `assert CALL == LITERAL` (or `LITERAL == CALL`, or `CALL is None/True/False`): the probe
  reports the value of CALL; it must be plain data equal to the literal, type-strictly
  (`same`).
- any other `assert E`: the probe reports E's value, which must be exactly True; for
  `assert not E`, exactly False. `assert A and B` is two asserts.
- `try: BODY except ERROR: pass else: raise AssertionError(...)`: the probe reports which
  built-in exception class BODY raised (or that it returned); it must be ERROR or a
  subclass.
- `for NAME in [LITERALS]:` is unrolled; other statements (setup, method calls) are kept.

The expected values are the literals written in the tests: one source of truth, no
reference solution needed at judging time (user task files need none). Anything else is
refused with `Unsupported`, naming the line. The wire format the probe reports in is
`harness.py`'s (type-tagged JSON); `decode` reads it back into plain values.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
from dataclasses import dataclass

REL_TOL, ABS_TOL = 1e-9, 1e-12  # floats: math.isclose with these; ints and floats compare by value
MAX_DEPTH = 64  # nesting of a reported value
LITERAL_SIZE = 100_000  # elements a literal in the tests may expand to (`[2] * 10`)


class Unsupported(ValueError):
    """The tests use a form that cannot become observations: the message says which line."""


@dataclass(frozen=True)
class Observation:
    line: int  # in the tests
    source: str  # the assert, for the outcome's detail
    expected: object = None  # the plain value the report must equal
    raises: tuple[type, ...] = ()  # or: the exception classes one of which BODY must raise


@dataclass(frozen=True)
class Converted:
    probe: str  # Python statements the answer's process runs
    observations: tuple[Observation, ...]


def literal(node: ast.AST, names: dict | None = None):
    """The value of a literal expression (`ast.literal_eval`, plus `+` and `*` of literals,
    as in `[2] * 10`, and `names` bound once to a literal); Unsupported where it is not one."""
    if isinstance(node, ast.Name) and node.id in (names or {}):
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = literal(node.left, names), literal(node.right, names)
        if isinstance(node.op, ast.Mult) and any(type(side) is int and side > LITERAL_SIZE
                                                 for side in (left, right)):
            raise Unsupported("a literal too large to expand")
        try:
            return left + right if isinstance(node.op, ast.Add) else left * right
        except TypeError as error:
            raise Unsupported(str(error)) from None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise Unsupported(f"not a literal: {ast.unparse(node)}") from None


def _is_literal(node: ast.AST, names: dict | None = None) -> bool:
    try:
        literal(node, names)
        return True
    except Unsupported:
        return False


def _exceptions(node: ast.AST | None) -> tuple[type, ...]:
    names = node.elts if isinstance(node, ast.Tuple) else [node]
    found = []
    for name in names:
        cls = getattr(builtins, name.id, None) if isinstance(name, ast.Name) else None
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise Unsupported("an except clause must name built-in exception classes")
        found.append(cls)
    return tuple(found)


def _is_expect_raise(stmt: ast.stmt) -> bool:
    """`try: ... except E: pass else: raise ...`: the tests' way of saying BODY raises E."""
    return (isinstance(stmt, ast.Try) and len(stmt.handlers) == 1 and not stmt.finalbody
            and len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.Raise)
            and stmt.handlers[0].name is None
            and all(isinstance(s, ast.Pass) for s in stmt.handlers[0].body))


def _report(kind: str, number: int, *args: ast.expr) -> ast.stmt:
    call = ast.Call(ast.Name(f"__{kind}__", ast.Load()),
                    [ast.Constant(number), *args], [])
    return ast.Expr(call)


def _constants(tree: ast.Module) -> dict:
    """Names the tests bind once, at the top, to a literal (`expected = [1, 2]`): compared
    with, they are expected values like the literal itself."""
    stores = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
              and isinstance(n.ctx, (ast.Store, ast.Del))]
    found = {}
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
        if len(getattr(stmt, "targets", ())) == 1 and isinstance(target, ast.Name) \
                and stores.count(target.id) == 1 and _is_literal(stmt.value):
            found[target.id] = literal(stmt.value)
    return found


class _Converter:
    def __init__(self, lines: list[str], names: dict):
        self.lines, self.observations, self.names = lines, [], names

    def source(self, node: ast.AST) -> str:
        return self.lines[node.lineno - 1].strip() if node.lineno <= len(self.lines) else ""

    def observe(self, node: ast.stmt, expected=None, raises=()) -> int:
        self.observations.append(Observation(node.lineno, self.source(node), expected, raises))
        return len(self.observations) - 1

    def asserted(self, stmt: ast.Assert, test: ast.expr) -> list[ast.stmt]:
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            return [s for value in test.values for s in self.asserted(stmt, value)]
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return [_report("value", self.observe(stmt, False), test.operand)]
        if isinstance(test, ast.Compare) and len(test.ops) == 1 \
                and isinstance(test.ops[0], (ast.Eq, ast.Is)):
            left, right = test.left, test.comparators[0]
            names = self.names
            if _is_literal(left, names) and not _is_literal(right, names):
                left, right = right, left
            if _is_literal(right, names) and not _is_literal(left, names) and (
                    isinstance(test.ops[0], ast.Eq)
                    or any(literal(right, names) is one for one in (None, True, False))):
                return [_report("value", self.observe(stmt, literal(right, names)), left)]
        return [_report("value", self.observe(stmt, True), test)]

    def statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out = []
        for stmt in body:
            if isinstance(stmt, ast.Assert):
                out += self.asserted(stmt, stmt.test)
            elif _is_expect_raise(stmt):
                inner = [n for s in stmt.body for n in ast.walk(s)]
                if any(isinstance(n, (ast.Assert, ast.Try)) for n in inner):
                    raise Unsupported(f"line {stmt.lineno}: an assert inside an expected raise")
                number = self.observe(stmt, raises=_exceptions(stmt.handlers[0].type))
                out.append(ast.Try(body=stmt.body, handlers=[ast.ExceptHandler(
                    ast.Name("BaseException", ast.Load()), "__error__",
                    [_report("raised", number, ast.Name("__error__", ast.Load()))])],
                    orelse=[_report("returned", number)], finalbody=[]))
            elif isinstance(stmt, ast.For) and not stmt.orelse \
                    and isinstance(stmt.iter, (ast.List, ast.Tuple)) \
                    and all(_is_literal(element) for element in stmt.iter.elts):
                for element in stmt.iter.elts:  # unrolled: the count of reports is fixed
                    out.append(ast.Assign([stmt.target], element, lineno=stmt.lineno))
                    out += self.statements(stmt.body)
            elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Pass)):
                out.append(stmt)
            else:
                raise Unsupported(f"line {stmt.lineno}: {type(stmt).__name__} statements are "
                                  "not supported (asserts, expected raises, `for` over a "
                                  "literal list, assignments and calls are)")
        return out


@functools.lru_cache(maxsize=512)
def convert(tests: str) -> Converted:
    """The probe and observations of `tests`; Unsupported (naming the line) where a
    statement has no observation form, or there is no observation at all."""
    try:
        tree = ast.parse(tests)
    except SyntaxError as error:
        raise Unsupported(f"not valid Python ({error.msg}, line {error.lineno})") from None
    converter = _Converter(tests.splitlines(), _constants(tree))
    body = converter.statements(tree.body)
    if not converter.observations:
        raise Unsupported("no assert to observe")
    # a constant used only as an expected value leaves the probe with its value
    used = {n.id for stmt in body for n in ast.walk(stmt)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    body = [stmt for stmt in body if not (
        isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
        and stmt.targets[0].id in converter.names and stmt.targets[0].id not in used)]
    module = ast.fix_missing_locations(ast.Module(body, type_ignores=[]))
    return Converted(ast.unparse(module) + "\n", tuple(converter.observations))


TAGS = {"none", "bool", "int", "float", "str", "list", "tuple", "dict", "set", "frozenset"}


def decode(tagged, depth: int = 0):
    """A value from the probe's wire format; ValueError where it is not well formed."""
    if depth > MAX_DEPTH or not isinstance(tagged, list) or not tagged or tagged[0] not in TAGS:
        raise ValueError("not a tagged value")
    tag, rest = tagged[0], tagged[1:]
    if tag == "none":
        return None
    [content] = rest
    scalar = {"bool": bool, "str": str, "int": str, "float": str}
    if tag in scalar:
        if type(content) is not scalar[tag]:
            raise ValueError(f"a {tag} sent as {type(content).__name__}")
        return int(content) if tag == "int" else float(content) if tag == "float" else content
    if type(content) is not list:
        raise ValueError(f"a {tag} sent as {type(content).__name__}")
    if tag == "dict":
        pairs = [(decode(k, depth + 1), decode(v, depth + 1)) for k, v in content]
        value = dict(pairs)
    else:
        items = [decode(item, depth + 1) for item in content]
        value = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if len(value) != len(content):  # keys that collide (1 and True): no Python value does that
        raise ValueError(f"a {tag} with duplicate members")
    return value


def same(observed, expected) -> bool:
    """Type-strict equality of plain values: a bool equals only a bool, a str only a str,
    a list only a list; ints and floats compare by value, floats within REL_TOL/ABS_TOL;
    dict keys and set members must match in type too."""
    numbers = (int, float)
    if type(observed) in numbers and type(expected) in numbers:
        if float in (type(observed), type(expected)):
            return math.isclose(observed, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        return observed == expected
    if type(observed) is not type(expected):
        return False
    if isinstance(observed, (list, tuple)):
        return len(observed) == len(expected) and all(map(same, observed, expected))
    if isinstance(observed, (dict, set, frozenset)):
        if len(observed) != len(expected):
            return False
        mine = {key: key for key in observed}  # the observed key object equal to each expected one
        return all(key in mine and same(mine[key], key) and
                   (not isinstance(observed, dict) or same(observed[mine[key]], expected[key]))
                   for key in expected)
    return observed == expected


STOPS = ("syntax_error", "exception", "memory_limit", "process_limit")


def _check(report: dict, observation: Observation) -> str | None:
    """Why `report` fails `observation`; None where it holds."""
    if observation.raises:
        wanted = " or ".join(cls.__name__ for cls in observation.raises)
        if report.get("returned") is True:
            return f"no exception (expected {wanted})"
        cls = getattr(builtins, str(report.get("raised")), None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return None if issubclass(cls, observation.raises) else \
                f"raised {cls.__name__}, not {wanted}"
        return "a malformed report"
    if "not_plain" in report:
        return f"returned a {str(report['not_plain'])[:60]} object, not plain data"
    if "value" not in report:
        return "a malformed report"
    try:
        value = decode(report["value"])
    except (ValueError, TypeError, RecursionError):
        return "a malformed report"
    if same(value, observation.expected):
        return None
    return f"got {repr(value)[:200]}"


def verdict(reports: str, observations: tuple[Observation, ...]) -> tuple[str, str] | None:
    """(outcome kind, detail) from the answer process's reports, compared here with the
    expected values; None where it ended before reporting an end (the exit status tells
    why). Every observation must arrive, in order, and hold; any report that is not
    well formed is a failure."""
    count = 0
    for line in reports.splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            return "exception", "the answer's process wrote a malformed report"
        if "stop" in report:
            kind = report["stop"] if report["stop"] in STOPS else "exception"
            return kind, str(report.get("detail", ""))[:500]
        if report.get("end") is True:
            if count == len(observations):
                return "passed", ""
            return "exception", f"ended after {count} of {len(observations)} observations"
        if report.get("n") != count or count >= len(observations):
            return "exception", "the answer's process reported out of turn"
        why = _check(report, observations[count])
        if why:
            observation = observations[count]
            return "assertion", f"tests line {observation.line}: {observation.source}: {why}"
        count += 1
    return None
