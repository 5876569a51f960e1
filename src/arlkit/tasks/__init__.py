"""Tasks: a world or data set, its tools and its env, behind one protocol and one registry.

Built-in tasks: `toywiki` (multi-hop QA, synthetic), `toysql` (NL2SQL, synthetic), `math_python` (arithmetic
word problems with a sandboxed python tool), `qa_files` (HotpotQA, 2WikiMultihopQA, MuSiQue, JSONL/Parquet)
and `nl2sql_files` (Spider/BIRD layout). Importing this package registers them all.
"""

from arlkit.tasks.base import (
    PROCESS_REWARDS,
    REWARD_ONLY_FIELDS,
    RUN_FIELDS,
    TASKS,
    Task,
    ToyTask,
    build_task,
    process_reward,
)
from arlkit.tasks.math_python import MathPythonTask
from arlkit.tasks.nl2sql_files import NL2SQLFilesTask
from arlkit.tasks.qa_files import QAFilesTask
from arlkit.tasks.toysql import ToySQLTask
from arlkit.tasks.toywiki import ToyWikiTask

__all__ = [
    "PROCESS_REWARDS",
    "REWARD_ONLY_FIELDS",
    "RUN_FIELDS",
    "TASKS",
    "MathPythonTask",
    "NL2SQLFilesTask",
    "QAFilesTask",
    "Task",
    "ToySQLTask",
    "ToyTask",
    "ToyWikiTask",
    "build_task",
    "process_reward",
]
