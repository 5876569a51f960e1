"""Bounded staleness of asynchronous rollouts (docs/async.md): which policy version a batch may come from, and
what a step logs about it. Pure functions on integers; no threads, no torch.

Versions count updates: version v is the weights after trainer step v (v = 0: before the first update). Step k
trains on the weights of version k − 1, so a group sampled by version v is k − 1 − v versions old there
(the lag). The synchronous loop always trains lag 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def lag(step: int, version: int) -> int:
    """How many updates the weights that train at `step` are ahead of those that sampled at `version`."""
    return step - 1 - version


def oldest_version(step: int, max_staleness: int) -> int:
    """The oldest version whose samples `step` may still train: a producer about to sample the batch of `step`
    waits until at least this version is published (it never samples what it would have to throw away)."""
    return max(0, step - 1 - max_staleness)


def fresh(step: int, versions: Sequence[int], max_staleness: int) -> list[bool]:
    """Per group: may `step` train it (lag ≤ max_staleness)? Older groups are dropped, counted, never trained."""
    return [lag(step, v) <= max_staleness for v in versions]


def staleness_metrics(lags: Sequence[int], max_staleness: int) -> dict[str, float]:
    """`async/staleness_mean`, `_max` and the histogram `async/staleness_<k>` (groups per lag k, every k from 0
    to the bound, so curves line up across steps) of the groups a step trains."""
    counts = Counter(lags)
    out = {f"async/staleness_{k}": float(counts.get(k, 0)) for k in range(max_staleness + 1)}
    out["async/staleness_mean"] = sum(lags) / len(lags) if lags else 0.0
    out["async/staleness_max"] = float(max(lags, default=0))
    return out
