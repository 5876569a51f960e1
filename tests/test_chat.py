"""The tiny tokenizer (reload as Qwen2, single-id delimiters) and the chat template (round trip, prefix
preservation, tools, structured tool calls, grouped tool responses)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import unicodedata

import pytest
from transformers import AutoTokenizer

from arlkit.envs.parsing import HermesFormat
from arlkit.errors import ArlkitError
from arlkit.models.chat_template import DELIMITER_TOKENS, TURN_TOKENS
from arlkit.models.tiny import demo_trajectory
from arlkit.rollout.chat import ChatFormatter
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.trajectory import Role


@pytest.fixture(scope="module")
def reloaded(tiny):
    return AutoTokenizer.from_pretrained(tiny.model_dir)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def test_reloaded_tokenizer_gives_identical_ids(tiny, tokenizer, reloaded, rows_by_kind) -> None:
    """The Qwen2 pitfall: from_pretrained swaps in Qwen2's pre-tokenizer; training used the same one."""
    assert type(reloaded).__name__.startswith("Qwen2Tokenizer")
    world = tiny.task.world
    names = [p.name for p in world.people] + list(world.cities) + list(world.orgs) + list(world.countries)
    demos = [
        tokenizer.decode(demo_trajectory(tiny.task, tokenizer, r, "all_hops").token_ids)
        for r in rows_by_kind["2hop"][:3] + rows_by_kind["3hop"][:2]
    ]
    texts = [
        *[d.text for d in world.docs[:200]],
        *names,
        *(" " + n for n in names),
        *demos,
        "Zoë  Ångström\n\n  naïve café — 1,234.5 + 12e3 ok?!\t\r\n",  # NFC, digits, whitespace runs
        "e\u0301",  # decomposed é: NFC-normalised by both
        "<tool_call><tool_call>x</tool_call></answer><|im_end|>",
    ]
    texts.append("a , b . c ? d ! e 's f n't  g")  # decode must not "clean up" spaces
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert reloaded.encode(text, add_special_tokens=False) == ids, text
        # byte-level BPE is lossless up to NFC normalisation, for both tokenizers
        assert tokenizer.decode(ids) == reloaded.decode(ids) == unicodedata.normalize("NFC", text), text
    assert len(reloaded) == len(tokenizer)
    assert reloaded.eos_token_id == tokenizer.eos_token_id and reloaded.pad_token_id == tokenizer.pad_token_id
    assert reloaded.chat_template == tokenizer.chat_template
    msgs = [{"role": "user", "content": "Where was Ana Berg born?"}]
    assert reloaded.apply_chat_template(msgs, tokenize=False) == tokenizer.apply_chat_template(
        msgs, tokenize=False
    )


def test_special_and_delimiter_tokens_are_single_ids(tokenizer, reloaded) -> None:
    ids = set()
    for tok in (tokenizer, reloaded):
        for t in TURN_TOKENS + DELIMITER_TOKENS:
            (i,) = tok.encode(t, add_special_tokens=False)
            assert tok.convert_ids_to_tokens(i) == t
            # a single id inside text too, not merged with its neighbours
            assert i in tok.encode(f"ab{t}cd", add_special_tokens=False)
            ids.add(i)
    assert len(ids) == len(TURN_TOKENS) + len(DELIMITER_TOKENS)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # turn tokens are special (skipped on request), delimiters are not (they are the model's actions)
    text = "<|im_start|>assistant\nI<tool_call>x</tool_call><answer>y</answer><|im_end|>"
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == (
        "assistant\nI<tool_call>x</tool_call><answer>y</answer>"
    )


# ---------------------------------------------------------------------------------------------
# Round trip of a whole episode
# ---------------------------------------------------------------------------------------------


def _demo_episode(task, tokenizer, row, strategy: str) -> Episode:
    """demo_trajectory's loop, keeping the Episode so its messages can be rendered."""
    ep = Episode(
        task.make_env(), tokenizer, row, 0, RolloutParams(max_turns=task.max_turns, max_length=10_000)
    )
    for text in task.demo_actions(row, strategy):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if "<answer>" in text:
            ids.append(tokenizer.eos_token_id)
        ep.advance(ids)
        if ep.done:
            break
    assert ep.traj.token_ids == demo_trajectory(task, tokenizer, row, strategy).token_ids
    return ep


@pytest.fixture(scope="module")
def schema_task(task):
    """The test task with the tool schemas rendered into the system turn (as a real model would need)."""
    fields = {f.name for f in dataclasses.fields(task)}
    if "show_tool_schemas" not in fields:
        return task  # older ToyWikiTask: the schemas are always rendered
    return dataclasses.replace(task, show_tool_schemas=True)


@pytest.mark.parametrize("with_schemas", [False, True], ids=["bare", "schemas"])
@pytest.mark.parametrize(
    ("kind", "ending"), [("2hop", "\n"), ("3hop", "<|im_end|>\n")], ids=["answer", "max_turns"]
)
def test_round_trip_decode_equals_template(
    task, schema_task, tokenizer, rows_by_kind, kind, ending, with_schemas
) -> None:
    t = schema_task if with_schemas else task
    ep = _demo_episode(t, tokenizer, rows_by_kind[kind][0], "all_hops")
    traj, env = ep.traj, ep.env
    assert traj.n_turns == 3
    tools = env.tools_schema if with_schemas else None
    assert ep.chat.tools == tools  # what the episode rendered with
    rendered = tokenizer.apply_chat_template(ep.messages, tools=tools, tokenize=False)
    if with_schemas:
        assert json.dumps(env.tools_schema[0]) in rendered
    # The template closes every assistant message with "<|im_end|>\n". The trajectory ends where the model
    # stopped: after the eos <|im_end|> of the answer turn (the episode stores that message without the eos,
    # which the template adds back), so only the "\n" is missing; or after "</tool_call>" when the turn budget
    # ended the episode on a call, so "<|im_end|>\n" is missing. Everything before is identical, character
    # for character.
    decoded = tokenizer.decode(traj.token_ids)
    assert rendered == decoded + ending

    # Tokenising the whole rendered conversation at once gives the trajectory's ids at every PROMPT and
    # OBSERVATION position (the engine tokenised only the suffixes the template appended), and here, since
    # the demonstrations' actions are canonical tokenisations, at every position.
    full = tokenizer.encode(rendered, add_special_tokens=False)
    ctx = [i for i, r in enumerate(traj.roles) if r in (Role.PROMPT, Role.OBSERVATION)]
    assert len(ctx) > 0 and traj.roles.count(Role.OBSERVATION) > 0
    assert [full[i] for i in ctx] == [traj.token_ids[i] for i in ctx]
    assert full[: len(traj)] == traj.token_ids
    assert full[len(traj) :] == tokenizer.encode(ending, add_special_tokens=False)
    # and contiguous observation runs decode to exactly the template's glue around a tool response
    pos = 0
    for role, run in itertools.groupby(traj.roles):
        n = len(list(run))
        if role == Role.OBSERVATION:
            text = tokenizer.decode(traj.token_ids[pos : pos + n])
            assert text.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\n")
            assert text.endswith("\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
            assert tokenizer.encode(text, add_special_tokens=False) == traj.token_ids[pos : pos + n]
        pos += n


def test_prefix_preservation(schema_task, tokenizer, rows_by_kind) -> None:
    ep = _demo_episode(schema_task, tokenizer, rows_by_kind["2hop"][1], "all_hops")
    msgs, tools = ep.messages, ep.env.tools_schema
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]

    def render(k: int, gen: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs[:k], tools=tools, tokenize=False, add_generation_prompt=gen)

    for k in range(1, len(msgs)):
        assert render(k + 1).startswith(render(k)), k
        if msgs[k]["role"] == "assistant":  # the generation prompt is the start of the next assistant turn
            assert render(k + 1).startswith(render(k, gen=True)), k


def test_template_tools_structured_calls_and_grouped_responses(tokenizer) -> None:
    schema = {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the wiki.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
    calls = [
        {"type": "function", "function": {"name": "search", "arguments": {"query": "Ana"}}},
        {"type": "function", "function": {"name": "search", "arguments": '{"query": "Bo"}'}},  # JSON string
    ]
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who?"},
        {"role": "assistant", "content": "Look.", "tool_calls": calls},
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
        {"role": "assistant", "content": "<answer>x</answer>"},
    ]
    out = tokenizer.apply_chat_template(msgs, tools=[schema], tokenize=False, add_generation_prompt=True)
    expected = (
        "<|im_start|>system\nBe brief.\n# Tools\n<tools>\n"
        + json.dumps(schema)
        + '\n</tools>\nCall: <tool_call>{"name": ..., "arguments": ...}</tool_call>. Answer: <answer>...</answer>'
        "<|im_end|>\n"
        "<|im_start|>user\nWho?<|im_end|>\n"
        '<|im_start|>assistant\nLook.<tool_call>{"name": "search", "arguments": {"query": "Ana"}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": {"query": "Bo"}}</tool_call><|im_end|>\n'
        # consecutive tool messages: one user turn of <tool_response> blocks
        "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<answer>x</answer><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert out == expected
    # the structured calls render in the format the env parses
    parsed = HermesFormat().parse(out.split("<|im_start|>assistant\n")[1])
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("search", {"query": "Ana"}),
        ("search", {"query": "Bo"}),
    ]
    # without tools: the system message is rendered on its own, no tool section
    plain = tokenizer.apply_chat_template(msgs[:2], tokenize=False)
    assert plain == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n"
    # a tool call given without the "function" wrapper renders the same
    bare = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"name": "search", "arguments": {"query": "Ana"}}],
        }
    ]
    assert tokenizer.apply_chat_template(bare, tokenize=False) == (
        '<|im_start|>assistant\n<tool_call>{"name": "search", "arguments": {"query": "Ana"}}</tool_call><|im_end|>\n'
    )


def test_episode_groups_two_calls_into_one_observation(task, tokenizer, rows_by_kind) -> None:
    row = rows_by_kind["2hop"][0]
    ep = Episode(task.make_env(), tokenizer, row, 0, RolloutParams(max_turns=3, max_length=4096))
    a, b = row["hops"]
    text = (
        f'Two.<tool_call>{{"name": "search", "arguments": {{"query": "{a}"}}}}</tool_call>'
        f'<tool_call>{{"name": "search", "arguments": {{"query": "{b}"}}}}</tool_call>'
    )
    ep.advance(tokenizer.encode(text, add_special_tokens=False))
    assert not ep.done and len(ep.traj.turns[0].calls) == 2
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "tool", "tool"]
    obs = tokenizer.decode(ep.traj.token_ids[ep.traj.turns[0].end :])
    assert obs.count("<|im_start|>user") == 1 and obs.count("<tool_response>") == 2
    assert obs.index(f"{a}:") < obs.index(f"{b}:")
    assert ep.text == tokenizer.apply_chat_template(ep.messages, tokenize=False, add_generation_prompt=True)


def test_formatter_rejects_non_prefix_preserving_template(tokenizer) -> None:
    chat = ChatFormatter(tokenizer)
    msgs = [{"role": "user", "content": "Q"}]
    seg = chat.prompt(msgs)
    assert seg.ids == tokenizer.encode(seg.text, add_special_tokens=False)
    more = [*msgs, {"role": "assistant", "content": "A"}, {"role": "tool", "content": "obs"}]
    cont = chat.continuation(seg.text + "A", more)
    assert (
        cont.text
        == "<|im_end|>\n<|im_start|>user\n<tool_response>\nobs\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ArlkitError, match="prefix-preserving"):
        chat.continuation(seg.text + "B", more)  # the held text disagrees with what the template renders
