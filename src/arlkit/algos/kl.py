"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL divergence").

With r = π_ref/π_θ evaluated at the sampled token: k1 = −log r, k2 = ½ (log r)², k3 = r − 1 − log r (unbiased,
non-negative, low variance). Inputs and output: (B, T).
"""

from __future__ import annotations

import torch

from arlkit.algos.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")
K3_MAX = 10.0  # verl's bound on k3 (core_algos.kl_penalty_forward, "low_var_kl")


@KL_ESTIMATORS.register("k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3, its value clamped to [−10, 10] as verl's `low_var_kl`: it grows as e^{log r}, up to 4.9e8 at the
    log-ratio clamp, and its gradient with it; a token past the bound takes no KL gradient."""
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # clamp: exp overflow on far-off tokens
    return (log_ratio.exp() - 1.0 - log_ratio).clamp(-K3_MAX, K3_MAX)
