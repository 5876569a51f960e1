"""Episodes of several segments (an agent behind the gateway rewrote its history, arlkit/gateway/recorder.py):
each segment is its own training row, and every segment of an episode takes the episode's advantage, so an
episode counts once in its group's statistics however many segments it has (`rollout.gateway.
segment_advantage: episode`, the default; `segment` counts each segment as a sample of the group instead).

Rows of one episode share `metadata["episode"]` (an index within one rollout) and their group id; the last
segment (`segment == n_segments - 1`) stands for the episode in per-episode metrics. Rows without these keys
are single-segment episodes, as every built-in env's are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from arlkit.algos.advantages import AdvantageInputs, AdvantageOutput, AdvantageParams
from arlkit.errors import ArlkitError
from arlkit.trajectory import Trajectory


def is_last_segment(t: Trajectory) -> bool:
    return t.metadata.get("segment", 0) == t.metadata.get("n_segments", 1) - 1


def last_segments(trajs: Sequence[Trajectory]) -> list[Trajectory]:
    """One row per episode: the last segment (each row of a single-segment episode)."""
    return [t for t in trajs if is_last_segment(t)]


def segment_index(trajs: Sequence[Trajectory]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(episode (B,) long, last (B,) bool) when some episode has several segments; else None."""
    if all(t.metadata.get("n_segments", 1) == 1 for t in trajs):
        return None
    keys: dict[tuple[int, object], int] = {}
    episode = [
        keys.setdefault((t.group_id, t.metadata.get("episode", i)), len(keys)) for i, t in enumerate(trajs)
    ]
    return torch.tensor(episode), torch.tensor([is_last_segment(t) for t in trajs])


def episode_advantages(
    estimator: Callable[[AdvantageInputs, AdvantageParams], AdvantageOutput],
    inputs: AdvantageInputs,
    params: AdvantageParams,
    episode: torch.Tensor,
    last: torch.Tensor,
) -> AdvantageOutput:
    """Advantages with each episode counted once: `estimator` runs on the episodes' last segments (which hold
    the episode's reward), and every segment gets its episode's advantage on its generated tokens.

    Raises:
        ArlkitError: the estimator's advantage varies along a sequence (GAE, discounted returns): a segment
            has no single episode advantage to take.
    """
    rows = last.nonzero().squeeze(-1)
    groups = inputs.group_index[rows]
    dense = torch.unique(groups, return_inverse=True)[1]
    sub = AdvantageInputs(
        token_rewards=inputs.token_rewards[rows],
        loss_mask=inputs.loss_mask[rows],
        group_index=dense,
        turn=inputs.turn[rows],
        attention_mask=inputs.attention_mask[rows],
        values=inputs.values[rows] if inputs.values is not None else None,
    )
    out = estimator(sub, params)
    mask = sub.loss_mask
    per_episode = (out.advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    if ((out.advantages - per_episode[:, None]).abs() * mask).max() > 1e-5:
        raise ArlkitError(
            "multi-segment episodes need an advantage that is one number per episode (grpo, dr_grpo, rloo, "
            "reinforce_pp_baseline with algo.gamma 1), or rollout.gateway.segment_advantage=segment"
        )
    by_episode = torch.zeros(int(episode.max()) + 1)
    by_episode[episode[rows]] = per_episode
    adv = by_episode[episode][:, None] * inputs.loss_mask
    return AdvantageOutput(advantages=adv, returns=torch.zeros_like(adv))
