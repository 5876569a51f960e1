"""Tasks: a world or data set, its tools and its env, behind one protocol and one registry.

Built-in tasks: `toywiki` (multi-hop QA, synthetic), `toysql` (NL2SQL, synthetic), `math_python` (arithmetic
word problems with a sandboxed python tool), `qa_files` (HotpotQA, 2WikiMultihopQA, MuSiQue, JSONL/Parquet)
`nl2sql_files` (Spider/BIRD layout), `gymnasium` (a Gymnasium text environment) and `verifiers` (a taskset of
the verifiers package). Importing this package registers them all; a user's task is found by name the same way
(tasks/resolve.py).
"""

from arlkit.tasks.base import (
    PROCESS_REWARDS,
    REWARD_ONLY_FIELDS,
    RUN_FIELDS,
    TASKS,
    Task,
    ToyTask,
    dataclass_from_config,
    process_reward,
)
from arlkit.tasks.gym_text import GymnasiumTask
from arlkit.tasks.math_python import MathPythonTask
from arlkit.tasks.nl2sql_files import NL2SQLFilesTask
from arlkit.tasks.qa_files import QAFilesTask
from arlkit.tasks.resolve import ENTRY_POINT_GROUP, build_task, em_label, resolve_task
from arlkit.tasks.toysql import ToySQLTask
from arlkit.tasks.toywiki import ToyWikiTask
from arlkit.tasks.verifiers_taskset import VerifiersTask

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROCESS_REWARDS",
    "REWARD_ONLY_FIELDS",
    "RUN_FIELDS",
    "TASKS",
    "GymnasiumTask",
    "MathPythonTask",
    "NL2SQLFilesTask",
    "QAFilesTask",
    "Task",
    "ToySQLTask",
    "ToyTask",
    "ToyWikiTask",
    "VerifiersTask",
    "build_task",
    "dataclass_from_config",
    "em_label",
    "process_reward",
    "resolve_task",
]
