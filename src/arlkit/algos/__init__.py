"""Algorithms as pure tensor functions behind registries (METHODS.md §2–3)."""

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageOutput, AdvantageParams
from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.losses import AGGREGATIONS, POLICY_LOSSES, LossOutput
from arlkit.algos.registry import Registry

_BY_FIELD = {
    "advantage": ADVANTAGES,
    "policy_loss": POLICY_LOSSES,
    "aggregation": AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
}


def registry_for(field: str) -> Registry:
    """The registry whose names a config field (`algo.<field>`) takes."""
    return _BY_FIELD[field]


__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageInputs",
    "AdvantageOutput",
    "AdvantageParams",
    "LossOutput",
    "Registry",
    "registry_for",
]
