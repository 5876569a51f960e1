"""Final (outcome) rewards of an episode, computed from the metrics its env scored.

Its own module so that ToolEnv (which defaults to it) and the task envs that build ToolEnvs both import it
from below, and neither imports the other for it.
"""

from __future__ import annotations

__all__ = ["agent_r1_reward", "bounded_process_reward", "default_reward"]


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


def bounded_process_reward(step_sum: float, episode_sum: float, step_cap: float, episode_cap: float) -> float:
    """The process reward one step may earn (issue 19): its calls' summed rewards clipped to
    [-step_cap, step_cap], then clipped so the episode's running sum stays in [-episode_cap, episode_cap].

    Agent-R1's process reward (arXiv 2511.14460) is a shaping bonus next to an outcome worth at most 1;
    unbounded, 1,000 identical searches in one action earned 100. E.g. caps 0.3/0.5: a step summing 2.0
    earns 0.3; after 0.3 earned, the next such step earns 0.5 - 0.3 = 0.2, and every later one 0.
    """
    step = min(max(step_sum, -step_cap), step_cap)
    return min(max(episode_sum + step, -episode_cap), episode_cap) - episode_sum
