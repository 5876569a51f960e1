"""The trajectory viewer: per-token text in samples files, the HTML page (roles, escaping, branch trees,
shading data), row selection, run-folder errors and `arlkit inspect` in a subprocess."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import tiny_run_overrides
from rich.console import Console
from viewer_run import XSS, write_viewer_run

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.train.loop import setup, train_step
from arlkit.trajectory import GENERATED_ROLES, Role
from arlkit.viewer import load_run, render_page, write_page
from arlkit.viewer.load import RunSamples, select_rows
from arlkit.viewer.tokens import token_pieces

ROLE_NAMES = {int(r): r.name for r in Role}


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory) -> Path:
    return write_viewer_run(tiny, tmp_path_factory.mktemp("viewer") / "run")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class PageParser(HTMLParser):
    """Per trajectory card: its id, data attributes and tokens as (classes, data attributes, text); plus the
    branch tree as (depth, label text) lines and the page's script/link/src attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[dict] = []
        self.tree: list[tuple[int, str]] = []
        self.scripts = 0
        self.urls: list[str] = []
        self._token: dict | None = None
        self._tree_depth = 0
        self._in_trees = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        self.scripts += tag == "script"
        self.urls += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]
        if tag == "section" and "traj" in classes:
            self.cards.append({"id": a["id"], "source": a["data-source"], "tokens": []})
        elif tag == "section" and "trees" in classes:
            self._in_trees = True
        elif tag == "span" and "tok" in classes and self.cards and not self._in_trees:
            data = {k[5:]: float(v) for k, v in attrs if k.startswith("data-")}
            self._token = {"classes": classes, "data": data, "text": ""}
            self.cards[-1]["tokens"].append(self._token)
        elif tag == "li" and self._in_trees:
            self._tree_depth += 1
            self.tree.append((self._tree_depth, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._token = None
        elif tag == "li" and self._in_trees:
            self._tree_depth -= 1
        elif tag == "section":
            self._in_trees = False

    def handle_data(self, data: str) -> None:
        if self._token is not None:
            self._token["text"] += data
        elif self._in_trees and self.tree and self._tree_depth:
            depth, text = self.tree[-1]
            if depth == self._tree_depth:
                self.tree[-1] = (depth, text + data)


def parse_page(html: str) -> PageParser:
    p = PageParser()
    p.feed(html)
    return p


# ---------------------------------------------------------------------------------------------
# Per-token text and samples rows
# ---------------------------------------------------------------------------------------------


def test_token_pieces_join_to_the_decoded_text(tokenizer) -> None:
    text = "<|im_start|>user\nWhere was Ana Berg born? café 東京 😀<|im_end|>\n<search> Oslo</search>"
    ids = tokenizer.encode(text)
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids) == text
    # byte-level BPE splits "東" (3 UTF-8 bytes) over tokens: the last one carries the character, the
    # others carry "", never U+FFFD
    assert "東" in pieces and "\ufffd" not in "".join(pieces)
    assert pieces[0] == "<|im_start|>"


def test_samples_rows_keep_old_keys_and_add_viewer_keys(run_dir) -> None:
    rows = read_rows(run_dir / "samples.jsonl")
    assert [r["index"] for r in rows] == list(range(9)) and {r["step"] for r in rows} == {1}
    old_keys = {
        "group_id",
        "reward",
        "token_ids",
        "roles",
        "turn",
        "logprobs",
        "turns",
        "parent",
        "branch_pos",
    }
    for r in rows:
        assert old_keys | {"metadata", "text", "token_text", "entropies", "advantages"} <= set(r)
        n = len(r["token_ids"])
        assert len(r["token_text"]) == len(r["entropies"]) == len(r["advantages"]) == n
        assert "".join(r["token_text"]) == r["text"]
    for r in rows[:4]:  # sampled: the generator's entropies, on generated tokens only
        for role, h in zip(r["roles"], r["entropies"], strict=True):
            assert (h is not None) == (role in {int(x) for x in GENERATED_ROLES})
            assert h is None or h >= 0
    assert all(h is None for r in rows[4:] for h in r["entropies"])  # scripted: nothing was sampled
    # GRPO per group: a rollout's advantage is (r - mean) / (std + 1e-6) on its generated tokens, 0 elsewhere.
    # Group 1 (#4..#8) has rewards 1, 1, 0, 0, 0: mean 0.4, unbiased std sqrt((2·0.36 + 3·0.16) / 4) =
    # sqrt(0.3) ≈ 0.5477, so +1.0954 for the right answers and -0.7303 for the wrong ones.
    assert [r["reward"] for r in rows[4:]] == [1.0, 1.0, 0.0, 0.0, 0.0]
    for group in (rows[:4], rows[4:]):
        rewards = [r["reward"] for r in group]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1))
        for r in group:
            want = (r["reward"] - mean) / (std + 1e-6)
            for a, role in zip(r["advantages"], r["roles"], strict=True):
                assert a == pytest.approx(want if role in GENERATED_ROLES else 0.0, abs=1e-4)
    assert rows[4]["advantages"][-1] == pytest.approx(0.6 / math.sqrt(0.3), abs=1e-4)
    assert rows[6]["advantages"][-1] == pytest.approx(-0.4 / math.sqrt(0.3), abs=1e-4)


def test_train_step_writes_each_tokens_advantage(tiny, tmp_path) -> None:
    """`arlkit train`'s samples carry the advantages the update used, so the page can shade by them."""
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run"))
    train_step(setup(cfg, Console(quiet=True)), 1)
    rows = read_rows(tmp_path / "run" / "samples.jsonl")
    assert len(rows) == 8  # train.n_samples: both groups of 4 (rollout.n) of the step's 2 prompts
    for r in rows:
        assert len(r["advantages"]) == len(r["token_ids"])
    # GRPO: (r - group mean) / (unbiased group std + 1e-6) on every generated token, 0 elsewhere
    for group in (rows[:4], rows[4:]):
        rewards = [r["reward"] for r in group]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1))
        for r in group:
            want = (r["reward"] - mean) / (std + 1e-6)
            for a, role in zip(r["advantages"], r["roles"], strict=True):
                assert a == pytest.approx(want if role in GENERATED_ROLES else 0.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def test_page_tokens_roles_and_shading_data(run_dir) -> None:
    samples = load_run(run_dir)
    page = parse_page(render_page(samples))
    rows = {f"{s}-s{r['step']}-i{r['index']}": r for s, rs in samples.sources.items() for r in rs}
    assert len(page.cards) == len(rows) == 9 + 3
    for card in page.cards:
        row = rows[card["id"]]
        assert len(card["tokens"]) == len(row["token_ids"])
        assert "".join(t["text"] for t in card["tokens"]) == row["text"]
        for t, role in zip(card["tokens"], row["roles"], strict=True):
            assert f"role-{ROLE_NAMES[role]}" in t["classes"]
        entropies = [t["data"].get("e") for t in card["tokens"]]
        assert [e is not None for e in entropies] == [h is not None for h in row["entropies"]]
    sampled = [c for c in page.cards if c["source"] == "samples"][:4]
    assert any("a" in t["data"] for c in sampled for t in c["tokens"])
    assert {role for c in page.cards for t in c["tokens"] for role in t["classes"]} >= {
        f"role-{r.name}" for r in Role
    }


def test_observation_column_shows_the_tool_output_without_template_glue(run_dir) -> None:
    samples = load_run(run_dir)
    html = render_page(samples)
    shown = re.findall(r'<pre class="obs">(.*?)</pre>', html, re.S)  # the table's observation blocks
    messages = 0
    for row in (r for rows in samples.sources.values() for r in rows):
        for k, turn in enumerate(row["turns"]):
            tokens = "".join(
                text
                for text, role, t in zip(row["token_text"], row["roles"], row["turn"], strict=True)
                if role == Role.OBSERVATION and t == k
            )
            for message in turn["observation"]:  # what the tool wrote, inside the template's rendering
                messages += 1
                assert message in tokens and "<|im_start|>" in tokens and "<|im_start|>" not in message
                assert message in {html_unescape(b) for b in shown}
    assert messages >= 3  # the demonstrations' searches
    assert not any("im_start" in b or "tool_response" in b for b in shown)

    # rows written before turns kept their messages show the observation tokens instead
    old = json.loads(json.dumps(samples.sources["eval_base"][0]))
    for turn in old["turns"]:
        del turn["observation"]
    old_html = render_page(RunSamples(run_dir, {"eval_base": [old]}))
    assert "&lt;|im_start|&gt;" in "".join(re.findall(r'<pre class="obs">(.*?)</pre>', old_html, re.S))


def test_unbranched_samples_have_no_branch_tree_box(run_dir) -> None:
    samples = load_run(run_dir)
    html = render_page(RunSamples(run_dir, {"eval_base": samples.sources["eval_base"]}))
    assert "Branch trees" not in html and 'class="trees"' not in html
    assert "Branch trees" in render_page(samples)  # the samples file has branched rollouts
    # the message page.js fills when a filter matches no episode (checked in test_viewer_browser.py)
    assert '<p id="no-match" class="none" hidden></p>' in html


def test_page_escapes_untrusted_text_and_loads_nothing(run_dir) -> None:
    html = render_page(load_run(run_dir))
    assert XSS not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in html  # shown as text
    page = parse_page(html)
    assert page.scripts == 1  # the page's own script only
    assert page.urls == []  # no external stylesheet, script, image or font
    assert "http://" not in html and "https://" not in html


def test_branch_tree_and_shared_prefix(run_dir) -> None:
    samples = load_run(run_dir)
    page = parse_page(render_page(samples))
    # samples step 1: 4 sampled roots, then #4 → {#5 → {#7}, #6}; #8 hangs under the missing #99
    labels = [(d, text.split(" reward")[0].split(" (not")[0]) for d, text in page.tree]
    assert labels == [
        (1, "#0"),
        (1, "#1"),
        (1, "#2"),
        (1, "#3"),
        (1, "#4"),
        (2, "#5 @ token " + str(samples.sources["samples"][5]["branch_pos"])),
        (3, "#7 @ token " + str(samples.sources["samples"][7]["branch_pos"])),
        (2, "#6 @ token " + str(samples.sources["samples"][6]["branch_pos"])),
        (1, "#99"),
        (2, "#8 @ token 10"),
    ]
    for card in page.cards:
        row = samples.sources[card["source"]][int(card["id"].rsplit("-i", 1)[1])]
        shared = sum("shared" in t["classes"] for t in card["tokens"])
        assert shared == (row["branch_pos"] + 1 if row["parent"] is not None else 0)
    # #5 searched the first hop like its parent and branched after that observation; #6 guessed at once
    rows = samples.sources["samples"]
    first_obs = rows[4]["roles"].index(int(Role.OBSERVATION))
    prompt_len = rows[4]["roles"].count(int(Role.PROMPT))
    assert rows[5]["branch_pos"] >= first_obs and prompt_len - 1 <= rows[6]["branch_pos"] < first_obs


# ---------------------------------------------------------------------------------------------
# Row selection and the run folder
# ---------------------------------------------------------------------------------------------


def test_select_rows_takes_whole_steps_spread_evenly() -> None:
    rows = [{"step": s, "index": i} for s in range(1, 11) for i in range(2)]  # 10 steps × 2 rows
    # limit 6: 2 rows a step → 3 steps at positions round(i · 9 / 2) for i = 0, 1, 2 → 0, 4 (4.5 rounds to
    # even), 9 → steps 1, 5, 10
    assert [(r["step"], r["index"]) for r in select_rows(rows, 6)] == [
        (1, 0),
        (1, 1),
        (5, 0),
        (5, 1),
        (10, 0),
        (10, 1),
    ]
    assert select_rows(rows, 50) == rows
    assert [r["step"] for r in select_rows(rows, 1)] == [1]


def test_run_folder_errors_truncated_lines_and_tokenizer_fallback(run_dir, tmp_path, tiny) -> None:
    with pytest.raises(ArlkitError, match="does not exist") as e:
        load_run(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArlkitError, match=r"no samples\.jsonl"):
        load_run(tmp_path / "empty")

    # an older run: no per-token text, and its last line cut short by a killed process
    old = tmp_path / "old"
    old.mkdir()
    rows = read_rows(run_dir / "eval_base.jsonl")
    lines = [json.dumps({k: v for k, v in r.items() if k != "token_text"}) for r in rows]
    (old / "samples.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:50] + "\n")
    with pytest.raises(ArlkitError, match="--tokenizer"):
        load_run(old)
    tiny.tokenizer.save_pretrained(old / "checkpoints" / "final")
    samples = load_run(old)
    assert samples.skipped_lines == 1
    assert [r["token_text"] for r in samples.sources["samples"]] == [r["token_text"] for r in rows]


def _arlkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "arlkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_inspect(run_dir, tmp_path) -> None:
    out = tmp_path / "page.html"
    proc = _arlkit("inspect", str(run_dir), "--out", str(out), "--limit", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "page.html" in proc.stdout
    page = parse_page(out.read_text())
    # --limit 3 per file: samples has one step of 9 rows → its first 3; eval_base has 3
    assert [c["id"] for c in page.cards] == [f"samples-s1-i{i}" for i in range(3)] + [
        f"eval_base-s0-i{i}" for i in range(3)
    ]
    proc = _arlkit("inspect", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 2 and "missing" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert write_page(run_dir) == run_dir / "inspect.html"


def test_tree_keeps_rows_caught_in_a_parent_cycle(tmp_path) -> None:
    """Bad data (#1 → #2 → #1) must not drop rows from the tree: they are listed from the first one seen."""
    from arlkit.viewer.load import RunSamples

    def row(index: int, parent: int | None) -> dict:
        return {
            "step": 3,
            "index": index,
            "parent": parent,
            "branch_pos": 1 if parent is not None else None,
            "token_ids": [1, 2],
            "token_text": ["a", "b"],
            "roles": [0, 1],
            "turn": [0, 0],
            "reward": 0.0,
        }

    samples = RunSamples(tmp_path, {"samples": [row(0, None), row(1, 2), row(2, 1)]})
    page = parse_page(render_page(samples))
    assert [(d, t.split(" reward")[0]) for d, t in page.tree] == [
        (1, "#0"),
        (1, "#1 @ token 1"),
        (2, "#2 @ token 1"),
    ]
