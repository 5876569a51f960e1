"""PASS@(k,T) (arXiv 2604.14877, METHODS.md §8): pure functions on per-question success counts.

Notation: Q questions; for a policy and an interaction cap T, c[q] of the n episodes sampled for question q
(each allowed at most T tool rounds) were correct. PASS@(k,T) is the probability that at least one of k
independent episodes is correct; the unbiased estimator from n ≥ k samples is 1 − C(n − c, k) / C(n, k),
averaged over questions (Chen et al. arXiv 2107.03374). The capability boundary B_T is the set of questions
with c_T > 0 (meaningful at large n). Nothing here runs a model: `arlkit.eval.passk_run` samples the counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

Counts = Sequence[int]  # (Q,) correct episodes per question, each in [0, n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one question with c correct of n samples.

    1 − C(n−c, k)/C(n, k), computed as 1 − Π_{i=0}^{k−1} (n − c − i)/(n − i): no huge binomials, and exactly
    1.0 when fewer than k samples failed (every k-subset then holds a correct one).

    Raises:
        ValueError: unless 0 ≤ c ≤ n and 1 ≤ k ≤ n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(k):
        miss *= (n - c - i) / (n - i)
    return 1.0 - miss


def k_grid(n: int) -> list[int]:
    """k ∈ {1, 2, 4, …} up to n, with n itself last when it is not a power of two (METHODS.md §8)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else [*ks, n]


def pass_curve(counts: Counts, n: int, ks: Sequence[int]) -> list[float]:
    """PASS@k for each k in `ks`, the mean over questions of :func:`pass_at_k` (0.0 for no questions)."""
    if not counts:
        return [0.0 for _ in ks]
    return [sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks]


def boundary(counts: Counts) -> set[int]:
    """B_T: indices of the questions solved at least once (c > 0)."""
    return {q for q, c in enumerate(counts) if c > 0}


def exclusive_solves(a: Counts, b: Counts) -> tuple[int, int]:
    """(|B(a) \\ B(b)|, |B(b) \\ B(a)|): questions only `a` solves and questions only `b` solves. The first is
    the expansion of a's boundary over b's (METHODS.md §8: expansion = B_T(RL) \\ B_T(base) ≠ ∅)."""
    ba, bb = boundary(a), boundary(b)
    return len(ba - bb), len(bb - ba)


def common_solved(by_policy: Mapping[str, Counts]) -> list[int]:
    """Indices of the questions every policy solves at least once, in order."""
    sets = [boundary(c) for c in by_policy.values()]
    return sorted(set.intersection(*sets)) if sets else []


def efficiency(by_policy: Mapping[str, Counts], n: int) -> dict[str, float]:
    """PASS@(1,T) of each policy on the questions every policy solves (METHODS.md §8): how reliably a policy
    solves what all of them can. NaN for every policy when no question is commonly solved."""
    common = common_solved(by_policy)
    if not common:
        return {name: float("nan") for name in by_policy}
    return {name: sum(c[q] for q in common) / (n * len(common)) for name, c in by_policy.items()}


def cap_summary(by_policy: Mapping[str, Counts], n: int, ks: Sequence[int]) -> dict:
    """Everything METHODS.md §8 reports for one cap T: curves, boundary sizes, pairwise exclusive solves (every
    ordered pair once: "a|b" holds [only a, only b]) and efficiency on commonly solved questions."""
    return {
        "pass_at_k": {name: pass_curve(c, n, ks) for name, c in by_policy.items()},
        "boundary": {name: len(boundary(c)) for name, c in by_policy.items()},
        "exclusive": {
            f"{a}|{b}": list(exclusive_solves(by_policy[a], by_policy[b]))
            for a, b in itertools.combinations(by_policy, 2)
        },
        "common_solved": len(common_solved(by_policy)),
        "efficiency": efficiency(by_policy, n),
    }


def analyse(counts: Mapping[str, Mapping[int, Counts]], n: int, kinds: Sequence[str] | None = None) -> dict:
    """The JSON-ready analysis of `counts[policy][T]` (each (Q,), the same questions in the same order).

    Returns {"n", "k", "caps", "policies", "n_questions", "by_cap": {T: cap_summary}, "by_kind": {kind:
    {T: cap_summary on that kind's questions}}} with caps as strings (JSON object keys).
    """
    policies = list(counts)
    caps = sorted({t for per in counts.values() for t in per})
    ks = k_grid(n)
    lengths = {len(c) for per in counts.values() for c in per.values()}
    if len(lengths) > 1 or any(set(per) != set(caps) for per in counts.values()):
        raise ValueError("every policy needs counts for every cap, over the same questions")
    n_q = lengths.pop() if lengths else 0

    def summaries(index: Sequence[int]) -> dict[str, dict]:
        return {
            str(t): cap_summary({p: [counts[p][t][q] for q in index] for p in policies}, n, ks) for t in caps
        }

    out = {
        "n": n,
        "k": ks,
        "caps": caps,
        "policies": policies,
        "n_questions": n_q,
        "by_cap": summaries(range(n_q)),
    }
    if kinds is not None:
        groups: dict[str, list[int]] = {}
        for q, kind in enumerate(kinds):
            groups.setdefault(kind, []).append(q)
        out["by_kind"] = {
            kind: {"n_questions": len(idx), "by_cap": summaries(idx)} for kind, idx in sorted(groups.items())
        }
    return out
