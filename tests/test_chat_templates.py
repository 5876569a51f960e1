"""Observation insertion is prefix-preserving for every supported chat template: arlkit's own and a
Qwen2.5-like tokenizer built here (a tiny BPE with Qwen2.5-Instruct's chat template and added tokens); the
model's own template is kept when it can run tool episodes, else arlkit's is installed."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from transformers import AutoTokenizer

from arlkit.envs.parsing import HermesFormat
from arlkit.models.chat_template import (
    CHAT_TEMPLATE,
    QWEN25_CHAT_TEMPLATE,
    QWEN25_DELIMITER_TOKENS,
    ensure_tool_template,
    supports_tool_episodes,
)
from arlkit.models.loading import load_tokenizer
from arlkit.models.tokenizer import train_tokenizer
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.trajectory import Role


@pytest.fixture(scope="module")
def qwen_tokenizer(task):
    """A Qwen2.5-like tokenizer: byte-level BPE with Qwen2's pre-tokenisation, ChatML turn tokens,
    <tool_call>/</tool_call> as single added tokens (as in Qwen2.5; <answer> is split into pieces) and
    Qwen2.5-Instruct's chat template."""
    return train_tokenizer(
        task.text_corpus(), 600, delimiters=QWEN25_DELIMITER_TOKENS, chat_template=QWEN25_CHAT_TEMPLATE
    )


@pytest.fixture(scope="module")
def hermes_task(task):
    return dataclasses.replace(task, fmt="hermes", show_tool_schemas=True)


def _call(query: str) -> str:
    return f'<tool_call>\n{{"name": "search", "arguments": {{"query": "{query}"}}}}\n</tool_call>'


def _episode(tokenizer, task, row) -> Episode:
    """A scripted episode: one call, then two calls in one turn (grouped tool responses), then the answer."""
    ep = Episode(task.make_env(), tokenizer, row, 0, RolloutParams(max_turns=3, max_length=10_000))
    a, b = row["hops"]
    for text in (
        f"First {a}.{_call(a)}",
        f"Both.{_call(a)}{_call(b)}",
        f"Done.<answer> {row['answer']}</answer>",
    ):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if "<answer>" in text:
            ids.append(tokenizer.eos_token_id)
        ep.advance(ids)  # raises ArlkitError if the template is not prefix-preserving
    assert ep.done
    return ep


@pytest.mark.parametrize("which", ["arlkit", "qwen2.5"])
def test_observation_insertion_is_prefix_preserving(
    which, tokenizer, qwen_tokenizer, hermes_task, rows_by_kind
):
    tok = tokenizer if which == "arlkit" else qwen_tokenizer
    row = rows_by_kind["2hop"][0]
    ep = _episode(tok, hermes_task, row)
    traj, msgs, tools = ep.traj, ep.messages, ep.env.tools_schema
    assert [m["role"] for m in msgs] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]

    def render(k: int, gen: bool = False) -> str:
        return tok.apply_chat_template(msgs[:k], tools=tools, tokenize=False, add_generation_prompt=gen)

    # at every point where the engine renders (not between two tool messages of one group, which the template
    # closes as one user turn), the next rendering extends the previous one, and before an assistant message
    # it extends the generation prompt
    for k in range(1, len(msgs)):
        if msgs[k - 1]["role"] == msgs[k]["role"] == "tool":
            continue
        assert render(k + 1).startswith(render(k)), k
        if msgs[k]["role"] == "assistant":
            assert render(k + 1).startswith(render(k, gen=True)), k
    # the trajectory decodes to the full rendering, up to the "\n" the template adds after the last <|im_end|>
    assert tok.decode(traj.token_ids) + "\n" == render(len(msgs))
    assert json.dumps(tools[0]) in render(1)
    # each observation is exactly the template's glue around the tool responses, tokenised as the template says
    glue_open = "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
    glue_close = "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    pos, observations = 0, []
    for role, run in itertools.groupby(traj.roles):
        n = len(list(run))
        if role == Role.OBSERVATION:
            text = tok.decode(traj.token_ids[pos : pos + n])
            assert text.startswith(glue_open) and text.endswith(glue_close)
            assert tok.encode(text, add_special_tokens=False) == traj.token_ids[pos : pos + n]
            observations.append(text)
        pos += n
    assert len(observations) == 2 and observations[1].count("<tool_response>") == 2  # grouped into one turn


def test_qwen_tokenizer_splits_answer_tags_and_roles_follow_the_last_piece(
    qwen_tokenizer, hermes_task, rows_by_kind
):
    tok = qwen_tokenizer
    assert len(tok.encode("<tool_call>", add_special_tokens=False)) == 1
    answer_open = tok.encode("<answer>", add_special_tokens=False)
    assert len(answer_open) > 1  # not an added token in Qwen2.5
    row = rows_by_kind["2hop"][1]
    traj = _episode(tok, hermes_task, row).traj
    last = traj.turns[-1]
    ids, roles = traj.token_ids[last.start : last.end], traj.roles[last.start : last.end]
    at = next(i for i in range(len(ids)) if ids[i : i + len(answer_open)] == answer_open)
    # the opening tag's pieces are REASONING; ANSWER starts right after its last piece
    assert set(roles[: at + len(answer_open)]) == {Role.REASONING}
    assert tok.decode([i for i, r in zip(ids, roles, strict=True) if r == Role.ANSWER]).startswith(
        f" {row['answer']}"
    )
    # call content and closing delimiter are ACTION in the first turn, the opening delimiter is not
    first = traj.turns[0]
    acts = [
        i
        for i, r in zip(
            traj.token_ids[first.start : first.end], traj.roles[first.start : first.end], strict=True
        )
        if r == Role.ACTION
    ]
    assert tok.decode(acts).startswith('\n{"name": "search"') and tok.decode(acts).endswith("</tool_call>")


def test_qwen_template_renders_structured_calls_the_env_parses(qwen_tokenizer) -> None:
    msgs = [
        {"role": "user", "content": "Who?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"query": "Ana"}}}
            ],
        },
        {"role": "tool", "content": "r1"},
    ]
    out = qwen_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWho?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "search", "arguments": {"query": "Ana"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nr1\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    call = HermesFormat().parse(out.split("<|im_start|>assistant\n")[1])
    assert [(c.name, c.arguments) for c in call.calls] == [("search", {"query": "Ana"})]


def test_own_template_is_kept_only_when_it_runs_tool_episodes(tokenizer, qwen_tokenizer, tmp_path) -> None:
    assert supports_tool_episodes(tokenizer) and supports_tool_episodes(qwen_tokenizer)
    assert (
        ensure_tool_template(qwen_tokenizer) == "own" and qwen_tokenizer.chat_template == QWEN25_CHAT_TEMPLATE
    )
    plain = train_tokenizer(
        ["a b c"], 300, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert not supports_tool_episodes(plain)  # drops the tool schemas
    assert ensure_tool_template(plain) == "arlkit" and plain.chat_template == CHAT_TEMPLATE
    raising = train_tokenizer(["a b c"], 300, chat_template="{{ raise_exception('no tools') }}")
    assert ensure_tool_template(raising) == "arlkit"
    # a saved tokenizer without any template gets arlkit's when loaded for training
    none = train_tokenizer(["a b c"], 300)
    none.chat_template = None
    none.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template is None
    assert load_tokenizer(tmp_path).chat_template == CHAT_TEMPLATE
