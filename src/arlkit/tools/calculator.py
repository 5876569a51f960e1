"""A safe arithmetic calculator tool: the expression is walked as an ``ast``, never ``eval``-ed."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

from arlkit.tools.base import ToolResult, tool

__all__ = ["MAX_ABS_RESULT", "MAX_EXPONENT", "MAX_EXPRESSION_CHARS", "calculator"]

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_ABS_RESULT = 1e100

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class _CalcError(Exception):
    """An expression the calculator refuses; the message is shown to the model."""


def _check(value: int | float) -> int | float:
    # Checking every intermediate keeps big-integer arithmetic cheap: operands stay <= 1e100,
    # so even x ** 100 is bounded.
    if isinstance(value, complex):
        raise _CalcError("result is not a real number")
    if value != value or abs(value) > MAX_ABS_RESULT:  # NaN or too large
        raise _CalcError(f"number too large (limit: absolute value {MAX_ABS_RESULT:g})")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise _CalcError(f"exponent too large (limit: {MAX_EXPONENT})")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise _CalcError("division by zero") from None
        except OverflowError:
            raise _CalcError(f"number too large (limit: absolute value {MAX_ABS_RESULT:g})") from None
    what = type(node).__name__
    if isinstance(node, ast.Constant):
        what = f"literal {node.value!r}"
    elif isinstance(node, (ast.BinOp, ast.UnaryOp)):
        what = f"operator {type(node.op).__name__}"
    raise _CalcError(
        f"unsupported element ({what}); only numbers, + - * / // % ** and parentheses are allowed"
    )


def _format(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".15g")  # 15 digits hide binary noise such as 0.30000000000000004


@tool
def calculator(expression: str) -> str | ToolResult:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses.

    Args:
        expression: The expression to compute, e.g. "(3 + 4) * 2 ** 3".
    """
    text = expression.strip()
    if not text:
        return ToolResult("Error: empty expression.", ok=False)
    if len(text) > MAX_EXPRESSION_CHARS:
        return ToolResult(f"Error: expression longer than {MAX_EXPRESSION_CHARS} characters.", ok=False)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ToolResult(f"Error: could not parse expression {text!r}.", ok=False)
    try:
        return _format(_eval(tree))
    except _CalcError as exc:
        return ToolResult(f"Error: {exc}.", ok=False)
    except RecursionError:
        return ToolResult("Error: expression nested too deeply.", ok=False)
