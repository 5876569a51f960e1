"""What a batch of finished episodes did: means of the env's metrics, per-kind EM, finish-reason shares,
and the means of a scorer's own metrics (`env/<name>`) and named reward components (`reward/<name>`).

The training loop logs them under `rollout/` and evaluation under `eval/`; both sit above this layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from arlkit.envs.tool_env import EPISODE_METRICS
from arlkit.trajectory import Trajectory

__all__ = ["episode_metrics"]

# metrics summarised under names of their own below, or bookkeeping of every ToolEnv episode
SUMMARISED = frozenset({"em", "f1"}) | EPISODE_METRICS


def episode_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Means over episodes of the env's metrics, plus per-kind EM and finish-reason shares."""
    if not trajs:
        return {}
    sums: dict[str, float] = defaultdict(float)
    by_kind: dict[str, list[float]] = defaultdict(list)
    own: dict[str, list[float]] = defaultdict(list)  # a metric only some episodes have is their mean
    for t in trajs:
        m = t.metadata.get("metrics", {})
        for k, v in m.items():
            if k not in SUMMARISED:
                own[k if "/" in k else f"env/{k}"].append(v)
        sums["reward"] += t.reward
        sums["em"] += m.get("em", 0.0)
        sums["f1"] += m.get("f1", 0.0)
        sums["tool_calls"] += m.get("n_calls", 0.0)
        sums["failed_calls"] += m.get("n_failed_calls", 0.0)
        sums["turns"] += t.n_turns
        sums["format_error_rate"] += 1.0 - float(m.get("format_ok", 0.0))
        sums["response_tokens"] += t.n_generated
        sums[f"finish/{t.metadata.get('finish_reason', 'unknown')}"] += 1.0
        if t.metadata.get("kind"):
            by_kind[t.metadata["kind"]].append(m.get("em", 0.0))
    out = {k: v / len(trajs) for k, v in sums.items()}
    out.update({f"em/{k}": sum(v) / len(v) for k, v in sorted(by_kind.items())})
    out.update({k: sum(v) / len(v) for k, v in sorted(own.items())})
    return out
