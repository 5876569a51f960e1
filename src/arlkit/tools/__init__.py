"""Tools an agent can call: the Tool protocol, the ``@tool`` decorator, BM25 search, a calculator."""

from arlkit.tools.base import (
    FunctionTool,
    Tool,
    ToolArgumentError,
    ToolResult,
    tool,
    tool_schema,
    validate_arguments,
)
from arlkit.tools.calculator import calculator
from arlkit.tools.search import BM25Search

__all__ = [
    "BM25Search",
    "FunctionTool",
    "Tool",
    "ToolArgumentError",
    "ToolResult",
    "calculator",
    "tool",
    "tool_schema",
    "validate_arguments",
]
