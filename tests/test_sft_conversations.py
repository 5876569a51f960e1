"""`arlkit sft` on your own OpenAI-format conversations (train/conversations.py): rendered by the same chat
template code as RL, they give exactly the ids and roles of the task's scripted demonstrations; a template
that is not append-only makes segments; the command trains on a JSONL file; bad files fail clearly."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import run_cli, tiny_run_overrides
from test_gateway import THINK_STRIPPING

from arlkit.envs.parsing import HermesFormat
from arlkit.errors import ArlkitError
from arlkit.models.tiny import demo_trajectory
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.rollout.spans import SpanTags, scanner_for
from arlkit.train.conversations import conversation_trajectories, load_conversations
from arlkit.trajectory import Role


def openai_conversation(task, tokenizer, row: dict, strategy: str = "all_hops") -> dict:
    """A scripted demonstration written as an OpenAI chat: assistant tool_calls and tool messages."""
    ep = Episode(task.make_env(), tokenizer, row, 0, RolloutParams(max_turns=8, max_length=10_000))
    messages = list(ep.messages)
    for k, text in enumerate(task.demo_actions(row, strategy)):
        ids = tokenizer.encode(text, add_special_tokens=False)
        ep.advance(ids + ([tokenizer.eos_token_id] if "<answer>" in text else []))
        parsed = HermesFormat().parse(text)
        if parsed.calls:
            calls = [
                {
                    "id": f"c{k}{j}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for j, c in enumerate(parsed.calls)
            ]
            messages.append(
                {"role": "assistant", "content": text[: text.index("<tool_call>")], "tool_calls": calls}
            )
            obs = [m for m in ep.messages if m["role"] == "tool"][-len(calls) :]
            messages += [
                {"role": "tool", "tool_call_id": c["id"], "content": o["content"]}
                for c, o in zip(calls, obs, strict=True)
            ]
        else:
            messages.append({"role": "assistant", "content": text})
        if ep.done:
            break
    return {"messages": messages}


def spans_for(tokenizer):
    return scanner_for(tokenizer, SpanTags("<tool_call>", "</tool_call>"))


def test_conversations_give_the_scripted_demonstrations_ids_and_roles(tiny):
    tok, task = tiny.tokenizer, tiny.task
    rows = task.rows("train", 6, seed=4)
    convs = [openai_conversation(task, tok, r) for r in rows]
    got = conversation_trajectories(convs, tok, spans_for(tok), max_length=2048)
    assert len(got) == len(rows)  # one segment each
    for t, row in zip(got, rows, strict=True):
        want = demo_trajectory(task, tok, row, "all_hops")
        assert t.token_ids == want.token_ids
        assert t.roles == want.roles
    assert all(any(role in t.roles for t in got) for role in (Role.ACTION, Role.ANSWER, Role.OBSERVATION))


def test_a_template_that_drops_earlier_thinking_makes_segments(tiny):
    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = THINK_STRIPPING
    conv = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>plan</think>Hello."},
            {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "<think>more</think>Bye."},
        ]
    }
    first, second = conversation_trajectories([conv], tok, spans_for(tok), max_length=512)
    gen = [
        tok.decode([i for i, r in zip(t.token_ids, t.roles, strict=True) if r != Role.PROMPT])
        for t in (first, second)
    ]
    assert gen[0].startswith("<think>plan</think>Hello.") and gen[1].startswith("<think>more</think>Bye.")
    assert "plan" not in tok.decode(second.token_ids)  # the template dropped it from the history
    assert (first.metadata["segment"], second.metadata["segment"]) == (0, 1)


def test_bad_conversation_files_fail_clearly(tiny, tmp_path):
    with pytest.raises(ArlkitError, match="does not exist"):
        load_conversations(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n{oops\n')
    with pytest.raises(ArlkitError, match="line 2: not JSON"):
        load_conversations(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"messages": []}\n')
    with pytest.raises(ArlkitError, match="conversation 1: needs a non-empty list 'messages'"):
        load_conversations(empty)
    with pytest.raises(ArlkitError, match="no assistant message"):
        conversation_trajectories(
            [{"messages": [{"role": "user", "content": "x"}]}], tiny.tokenizer, spans_for(tiny.tokenizer), 512
        )


def test_arlkit_sft_trains_on_a_jsonl_of_conversations(tiny, tmp_path):
    data = tmp_path / "chats.jsonl"
    rows = tiny.task.rows("train", 16, seed=9)
    data.write_text(
        "".join(json.dumps(openai_conversation(tiny.task, tiny.tokenizer, r)) + "\n" for r in rows)
    )
    run_dir = tmp_path / "run"
    args = tiny_run_overrides(
        tiny.model_dir,
        run_dir,
        f"sft.data={data}",
        "sft.steps=12",
        "sft.batch_size=8",
        "sft.lr=3e-3",
        "task.n_eval=2",
    )
    args = [a for a in args if not a.startswith(("rollout.", "train.steps"))]
    config = tmp_path / "sft.yaml"
    config.write_text("task:\n  name: toywiki\n")
    proc = run_cli("sft", str(config), *args, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "16 conversations" in proc.stdout
    losses = [
        json.loads(line)["sft/loss"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "sft/loss" in line
    ]
    assert len(losses) == 12 and losses[-1] < losses[0]
