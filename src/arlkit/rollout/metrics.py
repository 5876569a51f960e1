"""What a batch of finished episodes did: means of the env's metrics, per-kind EM, finish-reason shares.

The training loop logs them under `rollout/` and evaluation under `eval/`; both sit above this layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from arlkit.trajectory import Trajectory

__all__ = ["episode_metrics"]


def episode_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Means over episodes of the env's metrics, plus per-kind EM and finish-reason shares."""
    if not trajs:
        return {}
    sums: dict[str, float] = defaultdict(float)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for t in trajs:
        m = t.metadata.get("metrics", {})
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
    return out
