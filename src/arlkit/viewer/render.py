"""One self-contained HTML page of sample trajectories: tokens by role, shading, tool calls, branch trees.

Everything from the run (model text, tool outputs, questions) is untrusted and goes through
:func:`html.escape`; the page loads nothing from the network (inline CSS and JS only).
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from importlib import resources
from typing import Any

from arlkit.trajectory import Role
from arlkit.viewer.load import RunSamples, group_by_step

__all__ = ["render_page"]

ROLE_NAMES = {int(r): r.name for r in Role}
META_FIELDS = ("question", "gold", "answer", "finish_reason", "kind", "strategy")


def _asset(name: str) -> str:
    return resources.files("arlkit.viewer").joinpath(name).read_text(encoding="utf-8")


def _num(x: Any, fmt: str = "+.3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _value(row: dict, key: str, i: int) -> float | None:
    values = row.get(key)
    if not isinstance(values, list) or i >= len(values):
        return None
    v = values[i]
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def card_id(source: str, row: dict) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{source}-s{row.get('step')}-i{row.get('index')}")


def _token(row: dict, i: int, shared: bool) -> str:
    role = ROLE_NAMES.get(row["roles"][i], "UNKNOWN") if i < len(row.get("roles", [])) else "UNKNOWN"
    turns = row.get("turn") or []
    tip = [role, f"turn {turns[i] + 1}" if i < len(turns) else "", f"token {i}"]  # 1-based, as in the table
    data = []
    for key, attr, label in (("entropies", "e", "H"), ("advantages", "a", "A"), ("logprobs", "", "logp")):
        v = _value(row, key, i)
        if v is not None:
            tip.append(f"{label} {v:.3f}")
            if attr:
                data.append(f' data-{attr}="{v:.4g}"')
    cls = f"tok role-{role}" + (" shared" if shared else "")
    title = escape(" · ".join(t for t in tip if t))
    return f'<span class="{cls}"{"".join(data)} title="{title}">{escape(row["token_text"][i])}</span>'


def _tokens(row: dict) -> str:
    """Every token as a span; a branched rollout's prefix (shared with its parent) is dimmed.

    `branch_pos` is the position of the last shared token (the branch keeps c_≤branch_pos, APPO's prefix),
    so the first regenerated token is branch_pos + 1; `parent` is the parent's `index`.
    """
    n = min(len(row["token_ids"]), len(row["token_text"]))
    branch = (
        row["branch_pos"] + 1 if row.get("parent") is not None and row.get("branch_pos") is not None else None
    )
    out = []
    for i in range(n):
        if i == branch:
            out.append(
                f'<span class="branch-mark" title="branched from #{escape(str(row["parent"]))}">↳</span>'
            )
        out.append(_token(row, i, branch is not None and i < branch))
    return f'<div class="tokens">{"".join(out)}</div>'


def _observation(row: dict, k: int) -> str:
    """The observation after turn k: the env's messages as the tools wrote them, each in its own block.

    Rows written before turns kept their messages fall back to the observation tokens, which also hold the
    chat template's role markers and tags around the tool output.
    """
    turn = (row.get("turns") or [])[k]
    if isinstance(turn.get("observation"), list):
        return "".join(f'<pre class="obs">{escape(str(m))}</pre>' for m in turn["observation"])
    roles, turns = row.get("roles") or [], row.get("turn") or []
    obs = int(Role.OBSERVATION)
    pieces = [
        row["token_text"][i]
        for i in range(min(len(roles), len(turns), len(row["token_text"])))
        if roles[i] == obs and turns[i] == k
    ]
    return f'<pre class="obs">{escape("".join(pieces))}</pre>' if pieces else ""


def _call(call: Any) -> str:
    if not isinstance(call, dict):
        return f'<div class="call">{escape(str(call))}</div>'
    ok = call.get("ok")
    args = json.dumps(call.get("arguments"), ensure_ascii=False, default=str)
    latency = call.get("latency_s")
    ms = f"{1000 * latency:.1f} ms" if isinstance(latency, (int, float)) else ""
    error = f'<div class="error">{escape(str(call["error"]))}</div>' if call.get("error") else ""
    return (
        f'<div class="call {"ok" if ok else "failed"}"><span class="call-ok">{"✓" if ok else "✗"}</span> '
        f'<span class="call-name">{escape(str(call.get("name")))}</span>'
        f'<code class="call-args">{escape(args[:2000])}</code> <span class="latency">{ms}</span>{error}</div>'
    )


def _turns(row: dict) -> str:
    rows = []
    for k, t in enumerate(row.get("turns") or []):
        calls = "".join(_call(c) for c in t.get("calls") or []) or '<span class="none">no tool call</span>'
        rows.append(
            f"<tr><td>{k + 1}</td><td>{escape(str(t.get('finish_reason', '')))}</td>"
            f"<td>{_num(t.get('reward'))}</td><td>{calls}</td><td>{_observation(row, k)}</td></tr>"
        )
    head = "<tr><th>turn</th><th>stop</th><th>step reward</th><th>tool calls</th><th>observation</th></tr>"
    return f'<table class="turns">{head}{"".join(rows)}</table>'


def _meta(row: dict) -> str:
    meta = row.get("metadata") or {}
    items = [(k, meta.get(k)) for k in META_FIELDS if meta.get(k) is not None]
    if meta.get("n_segments", 1) > 1:  # an agent's episode whose history was rewritten (arlkit/gateway/)
        items.append(
            ("segment", f"{meta['segment'] + 1} of {meta['n_segments']} of episode {meta['episode']}")
        )
    metrics = meta.get("metrics") or {}
    scores = [f"{k} {_num(v, '.3g')}" for k, v in metrics.items() if isinstance(v, (int, float))]
    if scores:
        items.append(("metrics", " · ".join(scores)))
    cells = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in items)
    return f'<dl class="meta">{cells}</dl>'


def _outcome(row: dict) -> str:
    metrics = (row.get("metadata") or {}).get("metrics") or {}
    if metrics.get("format_ok") == 0:
        return "format_error"
    return "correct" if metrics.get("em") == 1 else "wrong"


def _card(source: str, row: dict) -> str:
    em = ((row.get("metadata") or {}).get("metrics") or {}).get("em")
    branch = ""
    if row.get("parent") is not None:
        branch = f" · branch of #{escape(str(row['parent']))} at token {escape(str(row.get('branch_pos')))}"
    reward = row.get("reward")
    sign = "pos" if isinstance(reward, (int, float)) and reward > 0 else "neg"
    return (
        f'<section class="traj" id="{card_id(source, row)}" data-source="{escape(source)}" '
        f'data-outcome="{_outcome(row)}"><header><span class="where">{escape(source)} · step '
        f"{escape(str(row.get('step')))} · #{escape(str(row.get('index', '?')))} · group "
        f"{escape(str(row.get('group_id')))}{branch}</span>"
        f'<span class="reward {sign}">reward {_num(reward)}</span>'
        f'<span class="em">EM {_num(em, ".0f")}</span></header>'
        f"{_meta(row)}{_tokens(row)}{_turns(row)}</section>"
    )


def _tree_node(source: str, row: dict, children: dict[Any, list[dict]], seen: set[int]) -> str:
    seen.add(id(row))
    kids = [c for c in children.get(row.get("index"), []) if id(c) not in seen]
    at = (
        f' <span class="at">@ token {escape(str(row.get("branch_pos")))}</span>'
        if row.get("parent") is not None
        else ""
    )
    label = (
        f'<a href="#{card_id(source, row)}">#{escape(str(row.get("index")))}</a>{at} '
        f'<span class="reward">reward {_num(row.get("reward"))}</span>'
    )
    sub = "".join(_tree_node(source, c, children, seen) for c in kids)
    return f'<li class="tree-node">{label}{f"<ul>{sub}</ul>" if sub else ""}</li>'


def _tree(source: str, step: Any, rows: list[dict]) -> str:
    """Parent → children of one step's rollouts; a parent missing from the samples is a placeholder, and
    rows caught in a parent cycle (bad data) are listed at the top level rather than lost."""
    indices = {r.get("index") for r in rows}
    children: dict[Any, list[dict]] = {}
    for r in rows:
        children.setdefault(r.get("parent"), []).append(r)
    seen: set[int] = set()
    roots = "".join(_tree_node(source, r, children, seen) for r in children.get(None, []))
    for parent in [p for p in children if p is not None and p not in indices]:
        sub = "".join(_tree_node(source, c, children, seen) for c in children[parent] if id(c) not in seen)
        label = f"#{escape(str(parent))} (not in the samples)"
        roots += f'<li class="tree-node missing">{label}<ul>{sub}</ul></li>'
    for r in rows:
        if id(r) not in seen:
            roots += _tree_node(source, r, children, seen)
    title = f"<h3>{escape(source)} · step {escape(str(step))}</h3>"
    return f'<div class="tree-block">{title}<ul class="tree">{roots}</ul></div>'


def _trees(samples: RunSamples) -> str:
    """The branch trees of the steps that have branched rollouts; nothing for a run without any."""
    blocks = [
        _tree(source, step, rs)
        for source, rows in samples.sources.items()
        for step, rs in group_by_step(rows).items()
        if any(r.get("parent") is not None for r in rs)
    ]
    return f'<section class="trees"><h2>Branch trees</h2>{"".join(blocks)}</section>' if blocks else ""


def _legend(has_entropy: bool, has_advantage: bool) -> str:
    chips = "".join(f'<span class="tok role-{r.name}">{r.name}</span> ' for r in Role)

    def radio(value: str, label: str, enabled: bool) -> str:
        state = "" if enabled else " disabled"
        checked = " checked" if value == "role" else ""
        return f'<label><input type="radio" name="shade" value="{value}"{checked}{state}> {label}</label>'

    radios = (
        radio("role", "role", True)
        + radio("entropy", "entropy (scaled per episode)", has_entropy)
        + radio("advantage", "advantage (green +, red −; one scale for the page)", has_advantage)
    )
    return f'<div class="legend">{chips}<span class="shade">shade by: {radios}</span></div>'


def _controls(samples: RunSamples) -> str:
    options = "".join(f'<option value="{escape(s)}">{escape(s)}</option>' for s in samples.sources)
    outcomes = "".join(
        f'<option value="{v}">{label}</option>'
        for v, label in (
            ("all", "all outcomes"),
            ("correct", "EM = 1"),
            ("wrong", "EM = 0"),
            ("format_error", "format error"),
        )
    )
    search = '<input id="q" type="search" placeholder="filter: question, answer, tool, text…">'
    return (
        f'<div class="controls">{search}<select id="src"><option value="all">all files</option>{options}'
        f'</select><select id="outcome">{outcomes}</select><span id="count"></span></div>'
    )


def _header(samples: RunSamples) -> str:
    cfg = samples.config
    facts = [
        ("model", (cfg.get("model") or {}).get("path")),
        ("advantage", (cfg.get("algo") or {}).get("advantage")),
        ("steps", (cfg.get("train") or {}).get("steps")),
    ]
    for name in ("base", "final"):
        em = (samples.summary.get(name) or {}).get("em")
        facts.append((f"held-out EM ({name})", _num(em, ".3f") if em is not None else None))
    if samples.skipped_lines:
        facts.append(("unreadable lines skipped", samples.skipped_lines))
    text = " · ".join(f"{k}: {v}" for k, v in facts if v is not None)
    return f"<h1>arlkit run {escape(samples.path.name)}</h1><p class='facts'>{escape(text)}</p>"


def render_page(samples: RunSamples) -> str:
    """The whole page as one HTML string."""
    rows = [(s, r) for s, rs in samples.sources.items() for r in rs]
    has_e = any(
        _value(r, "entropies", i) is not None for _, r in rows for i in range(len(r.get("entropies") or []))
    )
    has_a = any(isinstance(r.get("advantages"), list) for _, r in rows)
    cards = "".join(_card(s, r) for s, r in rows)
    no_match = '<p id="no-match" class="none" hidden></p>'  # page.js says which filter matched nothing
    head = f"<title>arlkit · {escape(samples.path.name)}</title><style>{_asset('page.css')}</style>"
    body = f"{_header(samples)}{_legend(has_e, has_a)}{_controls(samples)}{no_match}{_trees(samples)}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{head}</head><body data-shade="role">'
        f'{body}<main class="cards">{cards}</main><script>{_asset("page.js")}</script></body></html>'
    )
