"""Final (outcome) rewards of an episode, computed from the metrics its env scored.

Its own module so that ToolEnv (which defaults to it) and the task envs that build ToolEnvs both import it
from below, and neither imports the other for it.
"""

from __future__ import annotations

__all__ = ["agent_r1_reward", "default_reward"]


def agent_r1_reward(em: float, answer_ok: bool, tool_syntax_ok: bool) -> float:
    """Agent-R1 (arXiv 2511.14460) final reward: EM when the format is valid, else r_format - 1.

    r_format = (answer_ok + tool_syntax_ok) / 2, so an invalid episode scores in [-1, -0.5].
    """
    if answer_ok and tool_syntax_ok:
        return float(em)
    return (float(answer_ok) + float(tool_syntax_ok)) / 2 - 1.0


def default_reward(metrics: dict[str, float]) -> float:
    """Agent-R1 reward from the episode metrics (``em``, ``answer_ok``, ``tool_syntax_ok``)."""
    return agent_r1_reward(metrics["em"], metrics["answer_ok"] > 0, metrics["tool_syntax_ok"] > 0)
