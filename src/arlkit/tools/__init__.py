"""Tools an agent can call: the Tool protocol, the ``@tool`` decorator, BM25 search (over a corpus or the
episode's own paragraphs), read-only SQL, a sandboxed Python interpreter and a calculator."""

from arlkit.tools.base import (
    FunctionTool,
    RowTool,
    Tool,
    ToolArgumentError,
    ToolResult,
    tool,
    tool_schema,
    validate_arguments,
)
from arlkit.tools.calculator import calculator
from arlkit.tools.python import PythonTool
from arlkit.tools.search import BM25Search, RowSearch
from arlkit.tools.sql import SQLTool

__all__ = [
    "BM25Search",
    "FunctionTool",
    "PythonTool",
    "RowSearch",
    "RowTool",
    "SQLTool",
    "Tool",
    "ToolArgumentError",
    "ToolResult",
    "calculator",
    "tool",
    "tool_schema",
    "validate_arguments",
]
