"""Parse the `expression` shorthand into the op documents of the explicit form.

The text is read with `ast.parse(..., mode="eval")` and walked; nothing is ever evaluated.
Operators become the ops TensorFlow's own operator overloads call (`x @ w` is `matmul`),
calls name registered ops, keyword arguments are attrs. Anything else is refused with a
`GraphError` at `/expression` whose `position` is the character offset of the fault.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .errors import FieldError, GraphError, LimitExceeded
from .limits import Limits
from .registry import Registry, UnknownOp

PATH = "/expression"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the widest integer dtype a tensor may have
# The binary operators Python has beyond the `+ - * / ** @` that map to ops.
OPERATOR = re.compile(r"//|<<|>>|[%&|^]")
LEADING_SPACE = " \t\f\r\n"  # `mode="eval"` refuses an indented first line; a client need not care

BINARY_OPS: dict[type[ast.operator], str] = {
    ast.Add: "add",
    ast.Sub: "subtract",
    ast.Mult: "multiply",
    ast.Div: "divide",
    ast.Pow: "pow",
    ast.MatMult: "matmul",
}
COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Lt: "less",
    ast.LtE: "less_equal",
    ast.Gt: "greater",
    ast.GtE: "greater_equal",
    ast.Eq: "equal",
    ast.NotEq: "not_equal",
}
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
REFUSED: dict[type[ast.AST], str] = {
    ast.Subscript: "indexing and slicing (x[...]) are not supported; call an op such as slice or gather",
    ast.Lambda: "lambdas are not supported",
    **dict.fromkeys(COMPREHENSIONS, "comprehensions are not supported"),
    ast.IfExp: "conditional expressions (a if c else b) are not supported; call where(c, a, b)",
    ast.BoolOp: "'and' and 'or' are not supported; call logical_and(a, b) or logical_or(a, b)",
    ast.NamedExpr: "assignment expressions (:=) are not supported",
    ast.JoinedStr: "f-strings are not supported",
    ast.Starred: "starred arguments (*args) are not supported",
    ast.Dict: "dicts are not supported",
    ast.Set: "sets are not supported",
    **dict.fromkeys((ast.Await, ast.Yield, ast.YieldFrom), "'await' and 'yield' are not supported"),
}

Input = str | int | float | list[Any]  # a tensor name or op id, or an inline literal


@dataclass(frozen=True)
class ParsedExpression:
    """The expression as explicit-form op documents, in an order where inputs come first."""

    ops: list[dict[str, Any]]  # {"id", "op", "inputs", "attrs"}
    positions: list[int]  # character offset in the text of each op, for error pointers
    target: str  # the id of the op computing the whole expression, or a bare tensor name


def parse_expression(text: Any, registry: Registry, limits: Limits, reserved: Collection[str]) -> ParsedExpression:
    """Parse `text` into op documents whose generated ids avoid `reserved` and each other."""
    if not isinstance(text, str):
        raise GraphError(FieldError(PATH, f"must be a string, not {type(text).__name__}"))
    if len(text) > limits.max_expression_length:
        message = f"is {len(text)} characters long, over the limit (max_expression_length) of "
        raise LimitExceeded(FieldError(PATH, message + str(limits.max_expression_length)))
    skip = len(text) - len(text.lstrip(LEADING_SPACE))
    source = _Source(text[skip:], skip)
    if not source.text:
        raise GraphError(FieldError(PATH, "is empty; write an expression over tensor names, like 'x * x'", 0))
    bad = re.search(r"[\x00\ud800-\udfff]", text)
    if bad:
        raise GraphError(FieldError(PATH, "contains a null character or a lone surrogate", bad.start()))
    depth, at = _bracket_depth(source.text)
    if depth > limits.max_expression_depth:
        raise _too_deep(limits, skip + at)
    try:
        tree = ast.parse(source.text, mode="eval")
        depth, node, names = _syntax_depth(tree.body)
        if depth > limits.max_expression_depth:
            raise _too_deep(limits, source.at(node))
        reserved = {*reserved, *names}
        builder = _Builder(source, registry, limits, reserved)
        target = builder.tensor(tree.body)
    except SyntaxError as e:  # IndentationError and TabError are SyntaxErrors too
        error = FieldError(PATH, f"is not valid syntax: {e.msg}", source.syntax_position(e))
        raise GraphError(error) from None
    except (RecursionError, MemoryError):  # the parser's own stack, on pathological nesting
        raise _too_deep(limits, None) from None
    if builder.errors:
        raise GraphError(builder.errors)
    if not isinstance(target, str):
        message = "is a constant; it must involve at least one tensor, like 'x * x'"
        raise GraphError(FieldError(PATH, message, source.at(tree.body)))
    return ParsedExpression(builder.ops, builder.positions, target)


def _too_deep(limits: Limits, position: int | None) -> LimitExceeded:
    message = f"nests deeper than the limit (max_expression_depth) of {limits.max_expression_depth}"
    return LimitExceeded(FieldError(PATH, message, position))


def _bracket_depth(text: str) -> tuple[int, int]:
    """Return the deepest bracket nesting outside strings, and where; cheap, unlike ast.parse's recursion."""
    depth = deepest = at = 0
    quote: str | None = None
    escaped = False
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, i
        elif ch in ")]}":
            depth -= 1
    return deepest, at


def _syntax_depth(root: ast.expr) -> tuple[int, ast.expr, set[str]]:
    """Return how deep expression nodes nest under `root`, the deepest node, and the names used.

    One walk without recursion; ast.iter_child_nodes is inlined (it is most of the cost).
    """
    deepest, where = 0, root
    names: set[str] = set()
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.expr):
            if depth > deepest:
                deepest, where = depth, node
            if isinstance(node, ast.Name):
                names.add(node.id)
        for field in node._fields:
            child = getattr(node, field, None)
            if isinstance(child, ast.AST):
                stack.append((child, depth + 1 if isinstance(child, ast.expr) else depth))
            elif isinstance(child, list):
                stack.extend(
                    (c, depth + 1 if isinstance(c, ast.expr) else depth) for c in child if isinstance(c, ast.AST)
                )
    return deepest, where, names


class _Source:
    """The parsed text and how to turn the parser's (line, UTF-8 byte column) into offsets."""

    def __init__(self, text: str, skip: int):
        self.text = text
        self.skip = skip  # characters of leading whitespace stripped before parsing
        self.ascii = text.isascii()
        # The tokenizer's line ends; str.splitlines would also split at \f, \v and U+2028.
        self.starts = [0, *(m.end() for m in re.finditer(r"\r\n|\r|\n", text))]

    def offset(self, lineno: int, col: int, chars: bool = False) -> int:
        """Return the offset in the original text of a 1-based line and a 0-based column."""
        line = min(max(lineno, 1), len(self.starts)) - 1
        start = self.starts[line]
        if not (chars or self.ascii):
            col = len(self.text[start : start + col].encode()[:col].decode("utf-8", "ignore"))
        return self.skip + min(start + max(col, 0), len(self.text))

    def at(self, node: ast.expr | ast.keyword) -> int:
        return self.offset(node.lineno, node.col_offset)

    def segment(self, node: ast.expr | ast.keyword) -> str:
        end = node.end_lineno or node.lineno
        return self.text[self.at(node) - self.skip : self.offset(end, node.end_col_offset or 0) - self.skip]

    def syntax_position(self, e: SyntaxError) -> int | None:
        if e.lineno is None:
            return None
        return self.offset(e.lineno, (e.offset or 1) - 1, chars=True)  # SyntaxError counts characters

    def operator_at(self, left: ast.expr, right: ast.expr) -> int:
        """Return the offset of the binary operator between two operands (a BinOp has none)."""
        start = self.offset(left.end_lineno or left.lineno, left.end_col_offset or 0) - self.skip
        end = self.at(right) - self.skip
        i = start
        while i < end:
            ch = self.text[i]
            if ch == "#":
                newline = re.compile(r"\r|\n").search(self.text, i)
                i = newline.end() if newline else end
            elif ch in " \t\f\r\n\\()":
                i += 1
            else:
                return self.skip + i
        return self.skip + start


def _written_name(source: _Source, func: ast.expr) -> bool:
    """Whether each part of a dotted name is valid and spelled as the parser normalised it."""
    while isinstance(func, ast.Attribute):
        if not NAME.fullmatch(func.attr) or not _written(source.segment(func), func.attr, at_end=True):
            return False
        func = func.value
    return isinstance(func, ast.Name) and bool(NAME.fullmatch(func.id)) and source.segment(func) == func.id


def _written(segment: str, name: str, at_end: bool) -> bool:
    """Whether `name` is spelled as written: the parser NFKC-normalises identifiers (`ｘ` is `x`)."""
    rest = segment[: -len(name)] if at_end else segment[len(name) :]
    edge = rest[-1:] if at_end else rest[:1]
    spelled = segment.endswith(name) if at_end else segment.startswith(name)
    return spelled and not (edge and ("a" + edge).isidentifier())


class _Builder:
    """Walk the syntax tree once, appending an op document per operator or call."""

    def __init__(self, source: _Source, registry: Registry, limits: Limits, reserved: set[str]):
        self.source = source
        self.registry = registry
        self.limits = limits
        self.taken = reserved
        self.ops: list[dict[str, Any]] = []
        self.positions: list[int] = []
        self.errors: list[FieldError] = []
        self._ids = (f"_e{n}" for n in itertools.count(1))

    def fail(self, node: ast.expr | ast.keyword, message: str, position: int | None = None) -> None:
        self.errors.append(FieldError(PATH, message, self.source.at(node) if position is None else position))

    def add(self, op: str, inputs: list[Input | None], attrs: dict[str, Any], position: int) -> str:
        if len(self.ops) >= self.limits.max_ops:
            message = f"needs more ops than the limit (max_ops) of {self.limits.max_ops}"
            raise LimitExceeded(FieldError(PATH, message, position))
        op_id = next(op_id for op_id in self._ids if op_id not in self.taken)
        self.taken.add(op_id)
        self.ops.append({"id": op_id, "op": op, "inputs": inputs, "attrs": attrs})
        self.positions.append(position)
        return op_id

    def tensor(self, node: ast.expr) -> Input | None:
        """Return what `node` computes as an input; None once an error is recorded under it."""
        before = len(self.errors)
        number = self.number(node)
        if number is not None:
            return number
        if len(self.errors) > before:
            return None
        if isinstance(node, ast.Name):
            if not NAME.fullmatch(node.id) or self.source.segment(node) != node.id:
                self.fail(node, f"'{self.source.segment(node)}' is not a valid tensor name ({NAME.pattern})")
                return None
            return node.id
        if isinstance(node, ast.BinOp):
            left, right = self.tensor(node.left), self.tensor(node.right)
            position = self.source.operator_at(node.left, node.right)
            op = BINARY_OPS.get(type(node.op))
            if op is None:
                symbol = OPERATOR.match(self.source.text, position - self.source.skip)
                written = symbol.group() if symbol else type(node.op).__name__
                self.fail(node, f"operator '{written}' is not supported; call the op by name", position)
            if len(self.errors) > before or op is None:
                return None
            return self.add(op, [left, right], {}, position)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return self.tensor(node.operand)
            operand = self.tensor(node.operand)
            if isinstance(node.op, ast.Not):
                self.fail(node, "'not' is not supported; call logical_not(x)")
            elif isinstance(node.op, ast.Invert):
                self.fail(node, "operator '~' is not supported; call logical_not(x)")
            if len(self.errors) > before:
                return None
            return self.add("negative", [operand], {}, self.source.at(node))
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.List | ast.Tuple):
            return self.literal(node)
        if isinstance(node, ast.Constant):
            self.fail(node, _constant_message(node.value))
        elif isinstance(node, ast.Compare):
            op = COMPARISONS.get(type(node.ops[0]))
            hint = f"; call {op}(a, b)" if op else ""
            position = self.source.operator_at(node.left, node.comparators[0])
            self.fail(node, f"comparison operators are not supported{hint}", position)
        elif isinstance(node, ast.BoolOp):
            position = self.source.operator_at(node.values[0], node.values[1])
            self.fail(node, REFUSED[ast.BoolOp], position)
        elif isinstance(node, ast.Attribute):
            written = self.source.segment(node)
            self.fail(node, f"attribute access ({written}) is not supported; call an op, like transpose(x)")
        else:
            refused = REFUSED.get(type(node), f"{type(node).__name__} is not supported in an expression")
            self.fail(node, refused)
        return None

    def number(self, node: ast.expr) -> int | float | None:
        """Return a numeric literal, its signs folded (`-1`), or None; record one out of range."""
        sign, inner = 1, node
        while isinstance(inner, ast.UnaryOp) and isinstance(inner.op, ast.USub | ast.UAdd):
            sign = -sign if isinstance(inner.op, ast.USub) else sign
            inner = inner.operand
        value = inner.value if isinstance(inner, ast.Constant) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        value = sign * value
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            self.fail(node, f"the integer {value} is out of the int64 range")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, f"the number {self.source.segment(node)} overflows to infinity")
            return None
        return value

    def literal(self, node: ast.List | ast.Tuple) -> list[Any] | None:
        """Return a list or tuple of numbers (nested) as a nested-list literal."""
        before = len(self.errors)
        out: list[Any] = []
        for item in node.elts:
            if isinstance(item, ast.List | ast.Tuple):
                out.append(self.literal(item))
                continue
            errors = len(self.errors)
            number = self.number(item)
            if number is not None:
                out.append(number)
            elif len(self.errors) == errors:
                self.fail(item, "a list literal may hold only numbers and lists of numbers; call stack()")
        return None if len(self.errors) > before else out

    def call(self, node: ast.Call) -> str | None:
        before = len(self.errors)
        name = self.op_name(node)
        inputs = [self.tensor(arg) for arg in node.args]
        attrs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                self.fail(kw, "**kwargs is not supported; write each attr as name=value")
            elif not NAME.fullmatch(kw.arg) or not _written(self.source.segment(kw), kw.arg, at_end=False):
                self.fail(kw, f"'{self.source.segment(kw)}' does not start with a valid attr name")
            elif kw.arg in attrs:
                self.fail(kw, f"attr '{kw.arg}' is given twice")
            else:
                attrs[kw.arg] = self.attr(kw.value)
        if len(self.errors) > before or name is None:
            return None
        return self.add(name, inputs, attrs, self.source.at(node))

    def op_name(self, node: ast.Call) -> str | None:
        """Return the dotted op name a call names, as written, once the registry knows it."""
        func, parts = node.func, []
        if (func.lineno, func.col_offset) != (node.lineno, node.col_offset):
            self.fail(node, "write the op's name directly before its arguments, like tanh(x)")
            return None
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            self.fail(node, "only registered ops can be called, by name: like tanh(x) or math.log1p(x)")
            return None
        name = ".".join([func.id, *reversed(parts)])
        if not _written_name(self.source, node.func):
            self.fail(node, f"'{self.source.segment(node.func)}' is not a valid op name")
            return None
        try:
            self.registry.resolve(name)
        except UnknownOp as e:
            self.fail(node, str(e))
            return None
        return name

    def attr(self, node: ast.expr) -> Any:
        """Return an attr value as JSON (tuples become lists); record an error for anything else."""
        errors = len(self.errors)
        number = self.number(node)
        if number is not None or len(self.errors) > errors:
            return number
        if isinstance(node, ast.Constant) and (node.value is None or type(node.value) in (bool, str)):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return [self.attr(item) for item in node.elts]
        self.fail(node, "an attr value must be a literal: a number, string, True, False, None or a list")
        return None


def _constant_message(value: Any) -> str:
    if isinstance(value, str):
        return "a string is not a tensor; strings may only be attr values, like equation='ij,jk->ik'"
    if isinstance(value, complex):
        return "complex numbers are not supported"
    if value is None or isinstance(value, bool):
        return f"{value} is not a tensor; True, False and None may only be attr values, like axis=None"
    return f"{value!r} is not a tensor"
