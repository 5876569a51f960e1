"""Environments in text: action parsing, the multi-turn ToolEnv and multi-hop QA scoring."""

from arlkit.envs.parsing import (
    FORMATS,
    ActionFormat,
    HermesFormat,
    ParsedAction,
    TagsFormat,
    ToolCall,
    extract_answer,
    get_format,
)
from arlkit.envs.qa import QAScorer, exact_match, make_qa_env, normalize_answer, token_f1
from arlkit.envs.rewards import agent_r1_reward, default_reward
from arlkit.envs.tool_env import (
    EnvState,
    EpisodeResult,
    RewardFn,
    Scorer,
    StepResult,
    ToolCallRecord,
    ToolEnv,
)

__all__ = [
    "FORMATS",
    "ActionFormat",
    "EnvState",
    "EpisodeResult",
    "HermesFormat",
    "ParsedAction",
    "QAScorer",
    "RewardFn",
    "Scorer",
    "StepResult",
    "TagsFormat",
    "ToolCall",
    "ToolCallRecord",
    "ToolEnv",
    "agent_r1_reward",
    "default_reward",
    "exact_match",
    "extract_answer",
    "get_format",
    "make_qa_env",
    "normalize_answer",
    "token_f1",
]
