"""episode_metrics: means over episodes of the env's metrics, per-kind EM and finish-reason shares."""

from __future__ import annotations

from arlkit.rollout.metrics import episode_metrics
from arlkit.trajectory import Role, Trajectory


def _episode(reward: float, em: float, kind: str, finish: str, n_generated: int, calls: float) -> Trajectory:
    t = Trajectory(reward=reward)
    t.extend_context([1, 2], Role.PROMPT)
    t.add_turn(list(range(n_generated)), [Role.REASONING] * n_generated, [0.0] * n_generated)
    metrics = {"em": em, "f1": em, "n_calls": calls, "n_failed_calls": 0.0, "format_ok": 1.0}
    t.metadata = {"metrics": metrics, "kind": kind, "finish_reason": finish}
    return t


def test_means_kinds_and_finish_shares() -> None:
    trajs = [
        _episode(1.0, 1.0, "2hop", "answer", 4, 2.0),
        _episode(0.0, 0.0, "2hop", "answer", 2, 0.0),
        _episode(-0.5, 0.0, "3hop", "max_turns", 6, 1.0),
    ]
    m = episode_metrics(trajs)
    assert m["reward"] == 0.5 / 3  # (1 + 0 - 0.5) / 3
    assert m["em"] == 1 / 3
    assert m["tool_calls"] == 1.0  # (2 + 0 + 1) / 3
    assert m["response_tokens"] == 4.0  # (4 + 2 + 6) / 3
    assert m["turns"] == 1.0
    assert m["format_error_rate"] == 0.0
    assert m["em/2hop"] == 0.5 and m["em/3hop"] == 0.0
    assert m["finish/answer"] == 2 / 3 and m["finish/max_turns"] == 1 / 3


def test_no_episodes_give_no_metrics() -> None:
    assert episode_metrics([]) == {}
