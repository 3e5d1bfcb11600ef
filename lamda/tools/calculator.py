"""Calculator tool: arithmetic found in free text -> its value, as a list of strings.

    calculate("135+7721") == ["7856"]
    calculate("what is 15% of 240?") == ["36"]
    calculate("sqrt(2) * 3") == ["4.24264"]

The expression is parsed with Python's `ast` and evaluated by walking a whitelist of node types
(numbers, + - * / // % **, unary minus, parentheses, a few named functions and constants); nothing
is ever `eval`-ed. Work is bounded: long inputs, deep nesting, huge numbers, exponents and
factorials are refused (the result is []), so no input can hang the tool or exhaust memory.
Input that is not arithmetic gives [].
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_INPUT = 2000  # characters of query considered at all
MAX_EXPR = 300  # characters of one expression
MAX_DEPTH = 40  # AST nesting
MAX_BITS = 4096  # size of any integer, intermediate or final
MAX_FACTORIAL = 300
MAX_FLOAT = 1e300
SIGNIFICANT = 6  # digits of a non-integer result

FUNCTIONS = {
    "sqrt": math.sqrt, "cbrt": lambda x: math.copysign(abs(x) ** (1 / 3), x), "abs": abs,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "log": math.log10, "log10": math.log10, "log2": math.log2, "ln": math.log,
    "exp": math.exp, "round": round, "floor": math.floor, "ceil": math.ceil,
    "factorial": None,  # bounded separately
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow}

WORDS = [  # spoken forms -> symbols, applied before parsing
    (r"\bmultiplied by\b|\btimes\b|×|·", "*"), (r"\bdivided by\b|÷", "/"), (r"\bplus\b", "+"),
    (r"\bminus\b|−", "-"), (r"\bto the power of\b|\^", "**"),
    (r"\bsquare root of\s*(\d+(?:\.\d+)?)", r"sqrt(\1)"),
    (r"(\d)\s*x\s*(?=\d)", r"\1*"), (r"(\d),(?=\d{3}\b)", r"\1"),
]
PERCENT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*%\s*of\s+")  # "15% of 240" -> "(15/100)*240"
PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d(])")  # "20%", but "10 % 3" is modulo
NAMES = "|".join(sorted(list(FUNCTIONS) + list(CONSTANTS), key=len, reverse=True))
SCIENTIFIC = r"\d+(?:\.\d*)?e[+-]?\d+"
CANDIDATE = re.compile(rf"(?:{SCIENTIFIC}|[\d.\s()+\-*/%]|\*\*|\b(?:{NAMES})\b)+")


class Refused(Exception):
    """The expression is not allowed or too expensive."""


def calculate(query: str) -> list[str]:
    """Values of the arithmetic expressions in `query` (usually one); [] when there are none."""
    if not isinstance(query, str) or len(query) > MAX_INPUT:
        return []
    text = query.lower()
    for pattern, repl in WORDS:
        text = re.sub(pattern, repl, text)
    text = PERCENT_OF.sub(r"(\1/100)*", text)
    text = PERCENT.sub(r"(\1/100)", text)
    results = []
    for m in CANDIDATE.finditer(text):
        expr = m.group().strip().rstrip(".").strip()
        if not _is_arithmetic(expr):
            continue
        try:
            results.append(_format(evaluate(expr)))
        except (Refused, ArithmeticError, ValueError, TypeError, SyntaxError, RecursionError):
            continue
    return results


def _is_arithmetic(expr: str) -> bool:
    """Worth evaluating: has an operator or a function applied to something, and a digit."""
    if not expr or len(expr) > MAX_EXPR or not re.search(r"\d|\bpi\b|\btau\b", expr):
        return False
    operand = r"(?:[\d)]|\b(?:pi|tau|e)\b)"
    return bool(re.search(rf"{operand}\s*(\*\*|[+\-*/%])\s*[\d(a-z]|^\s*-|\b[a-z]+\s*\(", expr))


def evaluate(expr: str) -> int | float:
    """Evaluate one arithmetic expression by walking its AST (whitelisted nodes only)."""
    tree = ast.parse(expr, mode="eval")
    return _eval(tree.body, 0)


def _eval(node: ast.AST, depth: int):
    if depth > MAX_DEPTH:
        raise Refused("too deeply nested")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, depth + 1)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _check(BINARY[type(node.op)](left, right))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and len(node.args) == 1 and not node.keywords):
        arg = _eval(node.args[0], depth + 1)
        if node.func.id == "factorial":
            if not float(arg).is_integer() or not 0 <= arg <= MAX_FACTORIAL:
                raise Refused("factorial out of range")
            return _check(math.factorial(int(arg)))
        return _check(FUNCTIONS[node.func.id](arg))
    raise Refused(f"not arithmetic: {type(node).__name__}")


def _check_power(base, exp) -> None:
    """Refuse powers whose result would be huge, before computing them."""
    if isinstance(base, complex) or isinstance(exp, complex):
        raise Refused("complex")
    if abs(exp) > 1e6:
        if abs(base) in (0, 1):
            return
        raise Refused("exponent too large")
    magnitude = abs(exp) * math.log2(abs(base)) if base not in (0, 1, -1) else 0
    if exp > 0 and magnitude > MAX_BITS:
        raise Refused("result too large")


def _check(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Refused("not a real number")
    if isinstance(v, int) and v.bit_length() > MAX_BITS:
        raise Refused("integer too large")
    if isinstance(v, float) and (math.isnan(v) or abs(v) > MAX_FLOAT):
        raise Refused("not finite")
    return v


def _format(v) -> str:
    """Integers in full, other values to SIGNIFICANT digits (what a reply quotes)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.{SIGNIFICANT}g}"
