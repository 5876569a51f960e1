"""Markdown report pages of the analyses, written next to their PNGs in the run folder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and ±inf floats as None, so the JSON is strict (jq, JavaScript) and not Python's."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def fmt(x: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, NaN as an en dash."""
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figures_md(names: Sequence[str]) -> str:
    return "\n\n".join(f"![{n}]({n})" for n in names)


def _passk_tables(by_cap: dict, policies: Sequence[str], caps: Sequence[int], ks: Sequence[int]) -> list[str]:
    """One PASS@k table per cap, then boundary sizes, efficiency and exclusive solves across caps."""
    parts = []
    for t in caps:
        curves = by_cap[str(t)]["pass_at_k"]
        parts += [
            f"**T = {t}**",
            md_table(["policy", *(f"k={k}" for k in ks)], [[p, *curves[p]] for p in policies]),
        ]
    parts += ["## Capability boundary |B_T| (questions solved at least once)"]
    parts.append(
        md_table(
            ["policy", *(f"T={t}" for t in caps)],
            [[p, *(by_cap[str(t)]["boundary"][p] for t in caps)] for p in policies],
        )
    )
    parts += ["## Efficiency: PASS@(1,T) on the questions every policy solves"]
    eff = [[p, *(by_cap[str(t)]["efficiency"][p] for t in caps)] for p in policies]
    eff.append(["(commonly solved)", *(by_cap[str(t)]["common_solved"] for t in caps)])
    parts.append(md_table(["policy", *(f"T={t}" for t in caps)], eff))
    pairs = list(by_cap[str(caps[0])]["exclusive"])
    if pairs:
        parts += ["## Exclusive solves: questions only the first / only the second policy solves"]
        rows = [
            [
                pair.replace("|", " vs "),
                *(f"{a} / {b}" for a, b in (by_cap[str(t)]["exclusive"][pair] for t in caps)),
            ]
            for pair in pairs
        ]
        parts.append(md_table(["pair", *(f"T={t}" for t in caps)], rows))
    return parts


def passk_report(result: dict, figures: Sequence[str]) -> str:
    """The PASS@(k,T) report page (METHODS.md §8)."""
    policies, caps, ks = result["policies"], result["caps"], result["k"]
    parts = [
        "# PASS@(k,T)",
        f"{result['n_questions']} questions, n = {result['n']} episodes per question and cap T (T = tool rounds "
        "allowed; calls beyond T are refused). PASS@(k,T) = mean over questions of 1 − C(n−c, k)/C(n, k) "
        "(arXiv 2604.14877).",
        md_table(["policy", "path"], [[p, f"`{result['policy_paths'].get(p, '')}`"] for p in policies]),
        figures_md(figures),
        "## PASS@(k,T)",
        *_passk_tables(result["by_cap"], policies, caps, ks),
        "## Tool rounds per episode",
        md_table(
            ["policy", *(f"T={t}" for t in caps)],
            [[p, *(result["tool_rounds"][p][str(t)] for t in caps)] for p in policies],
        ),
    ]
    if result.get("by_kind"):
        parts.append("## By question kind: PASS@(1,T) → PASS@(n,T)")
        header = ["kind", "questions", "policy", *(f"T={t}" for t in caps)]
        rows = []
        for kind, sub in result["by_kind"].items():
            for p in policies:
                cells = [sub["by_cap"][str(t)]["pass_at_k"][p] for t in caps]
                rows.append([kind, sub["n_questions"], p, *(f"{c[0]:.2f} → {c[-1]:.2f}" for c in cells)])
        parts.append(md_table(header, rows))
    return "\n\n".join(parts) + "\n"


def cea_report(result: dict, figures: Sequence[str]) -> str:
    """The CEA report page (METHODS.md §7)."""
    from arlkit.eval.cea import MODELS, TERM_MEANING, TERMS

    sm = result["summary"]
    parts = [
        "# Capability Effect Attribution",
        f"{sm['questions']} questions, n = {result['n']} episodes per question and model; {sm['kept']} questions "
        "that some model solves are kept. z = logit((c + 0.5)/(n + 1)) (Laplace smoothing), z = Xλ solved per "
        "question (arXiv 2602.00994). Reas trains on reasoning + answer tokens, Tool on action tokens, Unified "
        "on all; Hybrid-Tool = Base reasons + Tool acts, Hybrid-Reas = Reas reasons + Base acts.",
        md_table(
            ["model", "path", "success rate"],
            [[m, f"`{_model_path(result, m)}`", sm["success_rate"][m]] for m in MODELS],
        ),
        figures_md(figures),
        "## λ over kept questions (logit units)",
        md_table(
            ["term", "meaning", "mean", "median"],
            [[t, TERM_MEANING[t], sm["lambda_mean"][t], sm["lambda_median"][t]] for t in TERMS],
        ),
        f"**Share of questions with λ23 < 0 (interference): {fmt(sm['interference_share'])}** (paper: 42–67%).",
    ]
    g = result.get("gradients")
    if g:
        parts += [
            "## Gradient angles",
            f"Policy-loss gradients of the {g['model']} model on {g['used']} of {g['rollouts']} rollouts (those with "
            f"a non-zero GRPO advantage and both roles), flattened over {g['n_params']:,} parameters; reasoning = "
            "REASONING + ANSWER tokens (paper: same-role < ~30°, cross-role ≈ 90°).",
            md_table(
                ["pairs", "mean angle (°)", "count"],
                [[k.replace("_", " "), g["mean_deg"][k], len(g["angles_deg"][k])] for k in g["mean_deg"]],
            ),
        ]
    return "\n\n".join(parts) + "\n"


def _model_path(result: dict, model: str) -> str:
    paths = result["paths"]
    if model == "hybrid_tool":
        return f"{paths['base']} + {paths['tool']}"
    if model == "hybrid_reas":
        return f"{paths['reas']} + {paths['base']}"
    return paths[model]
