"""The `expression` shorthand: what it parses to, what it refuses and where, and its bounds."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapecore.errors import GraphError, LimitExceeded
from tapecore.expression import NAME, ParsedExpression, parse_expression
from tapecore.limits import Limits
from tapecore.ops import REGISTRY
from tapecore.opspec import OpSpec, elementwise, reduced, same_as_input
from tapecore.registry import Registry


def _spec(name: str, *aliases: str, infer: Any = elementwise) -> OpSpec:
    return OpSpec(name=name, doc="A test op.", fn=lambda tf, *args, **attrs: None, infer=infer, aliases=aliases)


# Ops named here need not exist in the real registry yet: the parser only asks the registry
# whether a name resolves, so a registry of stand-ins tests it fully.
OPS = Registry(
    [
        *(_spec(name) for name in ("add", "subtract", "multiply", "divide", "pow", "matmul", "negative")),
        _spec("tanh", infer=same_as_input),
        _spec("math.log1p", "log1p_alias", infer=same_as_input),
        _spec("nn.relu", "relu", infer=same_as_input),
        _spec("reduce_sum", "math.reduce_sum", infer=reduced),
        _spec("einsum"),
        _spec("less"),
    ]
)
LIMITS = Limits()


def parse(text: Any, reserved: tuple[str, ...] = ("x", "z", "w"), limits: Limits = LIMITS) -> ParsedExpression:
    return parse_expression(text, OPS, limits, reserved)


def refusal(text: Any, limits: Limits = LIMITS) -> GraphError:
    with pytest.raises(GraphError) as info:
        parse(text, limits=limits)
    for error in info.value.errors:
        assert error.path == "/expression"
    return info.value


def op(id: str, name: str, *inputs: Any, **attrs: Any) -> dict[str, Any]:
    return {"id": id, "op": name, "inputs": list(inputs), "attrs": attrs}


# --- what expressions become ---------------------------------------------------------------


def test_contract_example_1_square() -> None:
    parsed = parse("x * x")
    assert parsed == ParsedExpression([op("_e1", "multiply", "x", "x")], [2], "_e1")


def test_contract_example_2_is_the_explicit_graph() -> None:
    parsed = parse("reduce_sum(x * x + 2 * z)")
    assert parsed.ops == [
        op("_e1", "multiply", "x", "x"),
        op("_e2", "multiply", 2, "z"),
        op("_e3", "add", "_e1", "_e2"),
        op("_e4", "reduce_sum", "_e3"),
    ]
    assert parsed.target == "_e4"
    assert parsed.positions == [13, 21, 17, 0]  # each operator, and the call's name


def test_contract_example_3_polynomial() -> None:
    parsed = parse("x**2 + 2*x - 1")
    assert parsed.ops == [
        op("_e1", "pow", "x", 2),
        op("_e2", "multiply", 2, "x"),
        op("_e3", "add", "_e1", "_e2"),
        op("_e4", "subtract", "_e3", 1),
    ]
    assert parsed.target == "_e4"
    assert parsed.positions == [1, 8, 5, 11]


def test_the_real_registry_parses_the_contract_examples() -> None:
    parsed = parse_expression("reduce_sum(x * x + 2 * z)", REGISTRY, LIMITS, ["x", "z"])
    assert [o["op"] for o in parsed.ops] == ["multiply", "multiply", "add", "reduce_sum"]


def test_every_operator_maps_to_its_op() -> None:
    parsed = parse("x + w - x * w / x ** w @ w")
    assert parsed.ops == [
        op("_e1", "add", "x", "w"),
        op("_e2", "multiply", "x", "w"),
        op("_e3", "pow", "x", "w"),
        op("_e4", "divide", "_e2", "_e3"),
        op("_e5", "matmul", "_e4", "w"),
        op("_e6", "subtract", "_e1", "_e5"),
    ]
    assert parsed.positions == [2, 10, 18, 14, 23, 6]


@pytest.mark.parametrize(
    ("text", "ops"),
    [
        ("x + w * z", [op("_e1", "multiply", "w", "z"), op("_e2", "add", "x", "_e1")]),
        ("(x + w) * z", [op("_e1", "add", "x", "w"), op("_e2", "multiply", "_e1", "z")]),
        ("x - w - z", [op("_e1", "subtract", "x", "w"), op("_e2", "subtract", "_e1", "z")]),
        ("x ** w ** z", [op("_e1", "pow", "w", "z"), op("_e2", "pow", "x", "_e1")]),
        ("-x ** 2", [op("_e1", "pow", "x", 2), op("_e2", "negative", "_e1")]),
        ("x @ w + z", [op("_e1", "matmul", "x", "w"), op("_e2", "add", "_e1", "z")]),
        ("x / w * z", [op("_e1", "divide", "x", "w"), op("_e2", "multiply", "_e1", "z")]),
    ],
)
def test_precedence_and_associativity_are_pythons(text: str, ops: list[dict[str, Any]]) -> None:
    assert parse(text).ops == ops


@pytest.mark.parametrize(
    ("text", "ops", "target"),
    [
        ("-x", [op("_e1", "negative", "x")], "_e1"),
        ("- -x", [op("_e1", "negative", "x"), op("_e2", "negative", "_e1")], "_e2"),
        ("+x", [], "x"),
        ("(x)", [], "x"),
        ("-1 * x", [op("_e1", "multiply", -1, "x")], "_e1"),
        ("x * -2.5", [op("_e1", "multiply", "x", -2.5)], "_e1"),
        ("x - -(1)", [op("_e1", "subtract", "x", -1)], "_e1"),
        ("x + --1", [op("_e1", "add", "x", 1)], "_e1"),
        ("x + +3", [op("_e1", "add", "x", 3)], "_e1"),
        ("-x * 2", [op("_e1", "negative", "x"), op("_e2", "multiply", "_e1", 2)], "_e2"),
    ],
)
def test_unary_minus_folds_numbers_and_negates_tensors(text: str, ops: list[Any], target: str) -> None:
    parsed = parse(text)
    assert (parsed.ops, parsed.target) == (ops, target)


def test_a_bare_name_is_the_target_with_no_ops() -> None:
    assert parse("x") == ParsedExpression([], [], "x")
    assert parse("  \n\tx  # the input\n") == ParsedExpression([], [], "x")


def test_dotted_names_and_aliases_are_kept_as_written() -> None:
    parsed = parse("reduce_sum(math.log1p(x)) + nn.relu(w) + relu(z) + math.reduce_sum(z)")
    assert [o["op"] for o in parsed.ops] == [
        "math.log1p",
        "reduce_sum",
        "nn.relu",
        "add",
        "relu",
        "add",
        "math.reduce_sum",
        "add",
    ]


def test_the_brief_example_with_an_attr() -> None:
    parsed = parse("reduce_sum(tanh(x @ w), axis=1)")
    assert parsed.ops == [
        op("_e1", "matmul", "x", "w"),
        op("_e2", "tanh", "_e1"),
        op("_e3", "reduce_sum", "_e2", axis=1),
    ]
    assert parsed.positions == [18, 11, 0]


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ("axis=None", {"axis": None}),
        ("axis=-1, keepdims=True", {"axis": -1, "keepdims": True}),
        ("axis=[0, 1]", {"axis": [0, 1]}),
        ("axis=(0, -1)", {"axis": [0, -1]}),
        ("axis=(1,)", {"axis": [1]}),
        ("paddings=[[1, 2], (3, -4)]", {"paddings": [[1, 2], [3, -4]]}),
        ("keepdims=False, scale=0.5", {"keepdims": False, "scale": 0.5}),
        ("mode='REFLECT', values=[None, 'a', True]", {"mode": "REFLECT", "values": [None, "a", True]}),
        ("axis=[]", {"axis": []}),
    ],
)
def test_keyword_attrs_pass_through_as_json(attrs: str, expected: dict[str, Any]) -> None:
    parsed = parse(f"reduce_sum(x, {attrs})")
    assert parsed.ops == [{"id": "_e1", "op": "reduce_sum", "inputs": ["x"], "attrs": expected}]
    json.dumps(parsed.ops, allow_nan=False)


def test_einsum_takes_a_string_equation() -> None:
    parsed = parse('einsum(x, w, equation="ij,jk->ik")')
    assert parsed.ops == [op("_e1", "einsum", "x", "w", equation="ij,jk->ik")]


def test_list_literals_become_nested_list_inputs() -> None:
    parsed = parse("multiply(x, [[1, -2.5], (3, 4)]) + [1, 2]")
    assert parsed.ops == [
        op("_e1", "multiply", "x", [[1, -2.5], [3, 4]]),
        op("_e2", "add", "_e1", [1, 2]),
    ]


def test_generated_ids_avoid_reserved_names_used_names_and_each_other() -> None:
    parsed = parse_expression("tanh(x) * _e4 + _e2", OPS, LIMITS, ["x", "_e1", "_e3"])
    ids = [o["id"] for o in parsed.ops]
    assert ids == ["_e5", "_e6", "_e7"]  # _e1, _e3 reserved; _e2, _e4 named in the expression
    assert parsed.ops[1]["inputs"] == ["_e5", "_e4"]
    assert parsed.ops[2]["inputs"] == ["_e6", "_e2"]


def test_int64_bounds_are_inclusive() -> None:
    assert parse("x + -9223372036854775808").ops[0]["inputs"][1] == -(2**63)
    assert parse("x + 9223372036854775807").ops[0]["inputs"][1] == 2**63 - 1


def test_a_call_of_literals_alone_is_left_to_the_validator() -> None:
    assert parse("x + 2 * 3").ops[0] == op("_e1", "multiply", 2, 3)


# --- what is refused, and where ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("x.T", 0, "attribute access (x.T)"),
        ("x + w[0]", 4, "indexing"),
        ("x[1:2]", 0, "indexing"),
        ("lambda: x", 0, "lambda"),
        ("[v for v in x]", 0, "comprehension"),
        ("{v: 1 for v in x}", 0, "comprehension"),
        ("reduce_sum(v for v in x)", 10, "comprehension"),  # Python counts the call's parenthesis
        ("x if w else z", 0, "where(c, a, b)"),
        ("x < w", 2, "less(a, b)"),
        ("x == w", 2, "equal(a, b)"),
        ("x >= w", 2, "greater_equal(a, b)"),
        ("x != w", 2, "not_equal(a, b)"),
        ("x is w", 2, "comparison"),
        ("x in w", 2, "comparison"),
        ("x and w", 2, "logical_and"),
        ("x or w", 2, "logical_or"),
        ("not x", 0, "logical_not"),
        ("~x", 0, "'~'"),
        ("x // w", 2, "'//'"),
        ("x % w", 2, "'%'"),
        ("x >> w", 2, "'>>'"),
        ("x | w", 2, "'|'"),
        ("(v := x)", 1, ":="),
        ("f'{x}'", 0, "f-string"),
        ("x + 'a'", 4, "string is not a tensor"),
        ("x * b'a'", 4, "is not a tensor"),
        ("x + ...", 4, "is not a tensor"),
        ("tanh(*x)", 5, "starred"),
        ("tanh(x, **w)", 8, "**kwargs"),
        ("(tanh)(x)", 0, "name directly"),
        ("tanh(x)(w)", 0, "registered ops can be called"),
        ("x[0](w)", 0, "registered ops can be called"),
        ("tanh(x, Ｔ=1)", 8, "valid attr name"),
        ("tanh(x, axis=1, axis=2)", 16, "given twice"),
        ("tanh(x, axis=w)", 13, "attr value must be a literal"),
        ("tanh(x, axis={1: 2})", 13, "attr value must be a literal"),
        ("tanh(x, axis=-True)", 13, "attr value must be a literal"),
        ("tanh(x, axis=[1, w])", 17, "attr value must be a literal"),
        ("tanh(x, axis=1j)", 13, "attr value must be a literal"),
        ("tanch(x)", 0, "did you mean 'tanh'"),
        ("log1p(x)", 0, "did you mean 'math.log1p'"),
        ("math.tanh(x)", 0, "unknown op 'math.tanh'"),
        ("x + é", 4, "not a valid tensor name"),
        ("x + ｘ", 4, "not a valid tensor name"),  # the parser would read U+FF58 as `x`
        ("x + " + "a" * 65, 4, "not a valid tensor name"),
        ("math.ｌog1p(x)", 0, "not a valid op name"),
        ("True * x", 0, "True is not a tensor"),
        ("x + None", 4, "None is not a tensor"),
        ("x * 1j", 4, "complex"),
        ("x + [w]", 5, "list literal may hold only numbers"),
        ("x + [True]", 5, "list literal may hold only numbers"),
        ("x + 1e400", 4, "infinity"),
        ("x - -1e400", 4, "infinity"),
        ("tanh(x, scale=1e400)", 14, "infinity"),
        ("x + 9223372036854775808", 4, "int64"),
        ("x + -9223372036854775809", 4, "int64"),
        ("x + {1, 2}", 4, "sets"),
        ("x + {}", 4, "dicts"),
        ("2", 0, "constant"),
        ("-2.5", 0, "constant"),
        ("[1, 2]", 0, "constant"),
        ("'x'", 0, "string is not a tensor"),
        ("await x", 0, "await"),
    ],
)
def test_refused_constructs_point_at_their_position(text: str, position: int, words: str) -> None:
    error = refusal(text)
    assert [(e.position, words in e.message) for e in error.errors] == [(position, True)], error.errors
    assert not isinstance(error, LimitExceeded)


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("x +", None, "invalid syntax"),
        ("x + )", 4, "unmatched ')'"),
        ("'é' + )", 6, "unmatched ')'"),  # characters, not UTF-8 bytes
        ("reduce_sum(x", 10, "never closed"),
        ("x\n+ w", 2, "invalid syntax"),
        ("x = 1", None, ""),
        ("x; w", None, ""),
        ("tanh(x, 1=2)", None, ""),
        ("tanh(x, axis=1, w)", None, "positional argument follows keyword argument"),
        ("   \t", 0, "empty"),
        ("", 0, "empty"),
        ("x\x00", 1, "null"),
        ("x + \ud800", 4, "surrogate"),
    ],
)
def test_syntax_errors_are_graph_errors_at_their_position(text: str, position: int | None, words: str) -> None:
    (error,) = refusal(text).errors
    assert words in error.message
    if position is not None:
        assert error.position == position
    else:
        assert error.position is not None and 0 <= error.position <= len(text)


@pytest.mark.parametrize("value", [None, 3, 2.5, ["x"], {"x": 1}, b"x * x", True])
def test_a_non_string_expression_is_refused(value: Any) -> None:
    (error,) = refusal(value).errors
    assert error.message.startswith("must be a string")


def test_positions_are_absolute_character_offsets_across_lines() -> None:
    text = "(\r\n 'é' +\n  reduce_sum(w.T) +\r x.T)"
    error = refusal(text)
    assert [text[e.position : e.position + 3] for e in error.errors if e.position is not None] == [
        "'é'",
        "w.T",
        "x.T",
    ]
    assert [e.position for e in error.errors] == [4, 23, 31]


def test_leading_whitespace_is_counted_in_positions() -> None:
    (error,) = refusal("\n  x.T").errors
    assert error.position == 3
    parsed = parse("  x *\\\n w")
    assert parsed.positions == [4]


def test_operator_positions_skip_brackets_and_comments() -> None:
    parsed = parse("(x  # a * comment\n ) @ (w)")
    assert parsed.positions == [21]


def test_every_error_is_collected() -> None:
    error = refusal("x.T + w[0] + tanch(z, axis=w) * (x < w)")
    messages = [e.message for e in error.errors]
    assert len(messages) == 5
    assert "attribute access" in messages[0] and "indexing" in messages[1]
    assert "unknown op 'tanch'" in messages[2] and "literal" in messages[3] and "less" in messages[4]


# --- bounds ----------------------------------------------------------------------------------


def test_length_is_checked_before_parsing() -> None:
    limits = Limits(max_expression_length=10)
    assert parse("x * w + z", limits=limits).target == "_e2"
    with pytest.raises(LimitExceeded) as info:
        parse("x * w + z))", limits=limits)  # unbalanced: it would be a syntax error if parsed
    (error,) = info.value.errors
    assert error.path == "/expression"
    assert "max_expression_length" in error.message and "10" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "(" * 65 + "x" + ")" * 65,
        "(" * 100_000 + "x" + ")" * 100_000,  # refused by counting, before ast.parse
        "[" * 3000,
        "-" * 4000 + "x",  # unary chains exhaust the parser's own stack
        "x" + "**x" * 1000,
        "+".join(["x"] * 65),
        "tanh(" * 64 + "x" + ")" * 64,
    ],
)
def test_deep_nesting_is_a_limit(text: str) -> None:
    limits = Limits(max_expression_length=1_000_000, max_expression_depth=64)
    with pytest.raises(LimitExceeded) as info:
        parse(text, limits=limits)
    (error,) = info.value.errors
    assert "max_expression_depth" in error.message and "64" in error.message


def test_depth_at_the_limit_is_accepted() -> None:
    limits = Limits(max_expression_depth=64)
    parsed = parse("(" * 60 + "+".join(["x"] * 64) + ")" * 60, limits=limits)
    assert len(parsed.ops) == 63
    assert parse("tanh(" * 63 + "x" + ")" * 63, limits=limits).target == "_e63"


def test_brackets_inside_strings_do_not_count_towards_depth() -> None:
    parsed = parse("einsum(x, equation='" + "(" * 70 + "')")
    assert parsed.ops[0]["attrs"]["equation"] == "(" * 70


def test_the_op_count_is_a_limit() -> None:
    limits = Limits(max_ops=3)
    assert len(parse("x * x * x * x", limits=limits).ops) == 3
    with pytest.raises(LimitExceeded) as info:
        parse("x * x * x * x * x", limits=limits)
    (error,) = info.value.errors
    assert "max_ops" in error.message and "3" in error.message and error.position == 14


# --- properties ------------------------------------------------------------------------------

TOKENS = [
    *["x", "w", "z", "_e1", "é", "ｘ", "reduce_sum", "math.log1p", "nn.relu", "tanh", "tanch", "einsum"],
    *["1", "-1", "2.5", "1e400", "9" * 20, "1j", "0x10", "True", "None", "'ij'", '"a"', "b'a'", "f'{x}'"],
    *["+", "-", "*", "/", "**", "@", "//", "%", "<", "==", "and", "or", "not", "if", "else", "lambda"],
    *[":", ":=", ",", "=", ".", "[", "]", "(", ")", "{", "}", "*", "**", "#", "\n", "\\\n", "\t", "axis="],
    *["keepdims=True", "axis=None", "equation='ij->j'", "for", "in", "await", "yield", "...", "\x00", " "],
]


def _check(text: str) -> None:
    """Parse `text`: a GraphError is fine; a result must be a well-formed graph."""
    reserved = ("x", "w", "_e2")
    try:
        parsed = parse_expression(text, OPS, Limits(max_ops=50), reserved)
    except GraphError as error:
        for e in error.errors:
            assert e.path == "/expression"
            assert e.position is None or 0 <= e.position <= len(text)
        return
    assert len(parsed.positions) == len(parsed.ops) <= 50
    assert all(0 <= p < len(text) for p in parsed.positions)
    known: set[str] = set()
    for doc in parsed.ops:
        assert set(doc) == {"id", "op", "inputs", "attrs"}
        assert doc["id"] not in reserved and doc["id"] not in known
        assert not re.search(rf"\b{doc['id']}\b", text)  # nor a name the expression uses
        assert doc["op"] in OPS
        for value in doc["inputs"]:
            if isinstance(value, str):
                assert value in known or NAME.fullmatch(value)
            else:
                assert isinstance(value, int | float | list) and not isinstance(value, bool)
        json.dumps(doc, allow_nan=False)
        known.add(doc["id"])
    if parsed.ops:
        assert parsed.target == parsed.ops[-1]["id"]
    else:
        assert NAME.fullmatch(parsed.target) and parsed.target in text


@settings(max_examples=500)
@given(st.text())
def test_any_text_parses_or_is_a_graph_error(text: str) -> None:
    _check(text)


@settings(max_examples=200)
@given(st.text(st.characters(exclude_categories=())))
def test_any_code_point_parses_or_is_a_graph_error(text: str) -> None:
    _check(text)


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join))
def test_token_soup_parses_or_is_a_graph_error(text: str) -> None:
    _check(text)


@settings(max_examples=300)
@given(
    st.recursive(
        st.sampled_from(["x", "w", "z", "2", "-1.5", "[1, 2]"]),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "@"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda s: f"-{s}"),
            inner.map(lambda s: f"tanh({s})"),
            st.tuples(inner, st.sampled_from(["None", "1", "[0, -1]"])).map(
                lambda t: f"reduce_sum({t[0]}, axis={t[1]})"
            ),
        ),
        max_leaves=12,
    )
)
def test_well_formed_expressions_parse_into_graphs(text: str) -> None:
    _check(text)
    if any(name in text for name in ("x", "w", "z")):
        parsed = parse(text)  # well-formed and over a tensor: it must parse
        assert parsed.ops or parsed.target in ("x", "w", "z")


def test_the_module_imports_neither_tensorflow_nor_flask() -> None:
    code = (
        "import sys, tapecore.expression; "
        "bad = [m for m in ('tensorflow', 'flask') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_numbers_stay_json_numbers() -> None:
    parsed = parse("x * 3 + 0.5 * w - 1e-3")
    literals = [v for o in parsed.ops for v in o["inputs"] if not isinstance(v, str)]
    assert literals == [3, 0.5, 1e-3]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in literals)
