"""Property-based fuzzing of the tool-call formats and ToolEnv with generated and mutated model actions.

A policy under RL emits anything: truncated calls, duplicated or missing delimiters, broken JSON, exotic
unicode, huge strings, nested tags, wrong argument types, unknown tools, several calls at once, answers
mixed with calls. Whatever it writes, parsing must not raise and every non-terminal env step must answer
each call (or parse error) with exactly one text observation, so a rollout never dies on model output.

Counts: every test asserts how many actions it fed; together they feed more than 10,000 actions to each
format (hermes, tags) and to ToolEnv in each format, with real tools (BM25 search, calculator, a tool
that raises, a tool that hangs past the timeout). `derandomize=True` makes the examples the same on
every run, so CI failures reproduce.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from arlkit.envs import HermesFormat, ParsedAction, TagsFormat, ToolCall, ToolEnv, make_qa_env
from arlkit.envs.parsing import _scan_blocks, extract_answer
from arlkit.envs.tool_env import PARSE_ERROR_NAME
from arlkit.tools import BM25Search, calculator, tool

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ---------------------------------------------------------------------------------------------
# Real tools: BM25 search, the calculator, one that raises and one that hangs past the timeout
# ---------------------------------------------------------------------------------------------

RELEASE = threading.Event()
TIMEOUT_S = 0.05


@pytest.fixture(autouse=True)
def _release_hung_tools() -> Iterator[None]:
    RELEASE.clear()
    yield
    RELEASE.set()  # the hung calls' daemon threads end after the test


@tool
def boom(x: int) -> str:
    """Always raises.

    Args:
        x: Anything.
    """
    raise RuntimeError(f"kaput {x}")


@tool
def hang(x: int) -> str:
    """Hangs past the env's timeout.

    Args:
        x: Anything.
    """
    RELEASE.wait(5.0)
    return "late"


DOCS = [
    ("Ana Berg", "Ana Berg was born in Oslo and works for Nordlys."),
    ("Oslo", "Oslo is the capital of Norway."),
    ("Nordlys", "Nordlys is an organisation based in Bergen."),
    ("Bergen", "Bergen is a city in Norway with rain."),
    ("Ünïcødé Ωmega", "A document with non-ASCII text: 東京, café, naïve."),
]
SEARCH = BM25Search(DOCS, top_k=2)
TOOLS = [SEARCH, calculator, boom, hang]
TOOL_NAMES = tuple(t.name for t in TOOLS)
ROW = {"question": "Where was Ana Berg born?", "answer": "Oslo"}


def make_env(fmt: str, max_turns: int) -> ToolEnv:
    return make_qa_env(TOOLS, fmt=fmt, max_turns=max_turns, tool_timeout_s=TIMEOUT_S)


# ---------------------------------------------------------------------------------------------
# Strategies: valid calls, free text, generated fragments and mutations
# ---------------------------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
NUMBERS = st.integers(-1000, 1000).map(str) | st.floats(-1e6, 1e6, allow_nan=False).map(repr)
EXPRESSIONS = st.recursive(
    NUMBERS,
    lambda inner: st.tuples(inner, st.sampled_from("+-*/%") | st.just("**") | st.just("//"), inner).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"
    ),
    max_leaves=5,
)
# Free text a model writes around its calls: no '<', so it cannot open or close a tag by accident.
PLAIN = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=40)


@st.composite
def valid_arguments(draw: st.DrawFn, name: str) -> dict:
    if name == "search":
        return {"query": draw(st.text(max_size=30))}
    if name == "calculator":
        return {"expression": draw(EXPRESSIONS)}
    return {"x": draw(st.integers(-5, 5))}


@st.composite
def calls(draw: st.DrawFn) -> ToolCall:
    """A call to one of the tools (hang rarely: each valid one costs a timeout) or to an unknown tool."""
    name = draw(st.sampled_from([*TOOL_NAMES[:3]] * 10 + ["hang", "serch", "lookup", "名前"]))
    if name in TOOL_NAMES and draw(st.integers(0, 3)) > 0:
        return ToolCall(name, draw(valid_arguments(name)))
    return ToolCall(name, draw(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3)))


def hermes_text(call: ToolCall, ascii_only: bool = True, indent: int | None = None) -> str:
    body = json.dumps(
        {"name": call.name, "arguments": call.arguments}, ensure_ascii=ascii_only, indent=indent
    )
    return f"<tool_call>{body}</tool_call>"


def tags_text(call: ToolCall) -> str:
    value = next(iter(call.arguments.values()), "") if call.arguments else ""
    return f"<{call.name}>{value}</{call.name}>"


@st.composite
def valid_actions(draw: st.DrawFn) -> str:
    """Reasoning text, one to three calls in either format, sometimes an answer."""
    parts = [draw(PLAIN)]
    for c in draw(st.lists(calls(), min_size=1, max_size=3)):
        if draw(st.booleans()):
            parts.append(hermes_text(c, draw(st.booleans()), draw(st.sampled_from([None, 2]))))
        else:
            parts.append(tags_text(c))
        parts.append(draw(PLAIN))
    if draw(st.integers(0, 4)) == 0:
        answer = f"<answer>{draw(PLAIN)}</answer>"
        parts.insert(draw(st.integers(0, len(parts))), answer)
    return "".join(parts)


DELIMITERS = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    *(f"<{n}>" for n in TOOL_NAMES),
    *(f"</{n}>" for n in TOOL_NAMES),
]
FRAGMENTS = [
    *DELIMITERS,
    '{"name": "search", "arguments": {"query": "Ana Berg"}}',
    '{"name": "calculator", "arguments": "{\\"expression\\": \\"1+1\\"}"}',
    '{"name": ',
    '"arguments": ',
    *'{}[]":,\\<>\n',
    "\\ud800",
    "null",
    "NaN",
    "1e999",
    "<|im_end|>",
]
# Code points a tokenizer's decode can produce and that break naive parsers: controls, NUL, line and
# paragraph separators, zero-width and bidi marks, BOM, combining marks, CJK, emoji, private use.
_CODEPOINTS = [
    *range(0x00, 0x20),
    *range(0x20, 0x7F),
    *range(0x300, 0x370),
    *range(0x590, 0x600),
    *range(0x200B, 0x2010),
    0x2028,
    0x2029,
    0x202E,
    0xFEFF,
    *range(0x4E00, 0x4E40),
    *range(0x1F600, 0x1F640),
    *range(0xE000, 0xE010),
]
# Inserted whole: lone and paired surrogate escapes, odd JSON numbers, values of the wrong type.
_PIECES = ["\\ud800", "\\udfff", "\\ud83d\\ude00", "NaN", "-Infinity", '"x"', "1", "[1, 2]", "null", "true"]
# Repeated up to thousands of times: deep nesting, huge numbers, huge strings, runs of delimiters.
_REPEATED = ["[", "{", '"', "9", "x", "<tool_call>", "<answer>", "</answer>", "<search>"]


def unicode_text(rng: random.Random, max_len: int = 20) -> str:
    return "".join(chr(rng.choice(_CODEPOINTS)) for _ in range(rng.randint(0, max_len)))


def payload(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return unicode_text(rng)
    if kind == 1:
        return rng.choice(_PIECES)
    return rng.choice(_REPEATED) * rng.choice([2, 50, 1000, 6000])


def _insert(text: str, rng: random.Random) -> str:
    at = rng.randint(0, len(text))
    return text[:at] + payload(rng) + text[at:]


def _duplicate_delimiter(text: str, rng: random.Random) -> str:
    at = rng.randint(0, len(text))
    return text[:at] + rng.choice(DELIMITERS) + text[at:]


def _delete_delimiter(text: str, rng: random.Random) -> str:
    present = [d for d in DELIMITERS if d in text]
    return text.replace(rng.choice(present), "", 1) if present else text


def _break_json(text: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(text) if ch in '{}[]":,']
    if not spots:
        return text
    i = rng.choice(spots)
    return text[:i] + rng.choice(["", "'", "{", "}", ",", '"', "\\"]) + text[i + 1 :]


def _nest(text: str, rng: random.Random) -> str:
    i = 2 * rng.randrange(len(DELIMITERS) // 2)  # an open tag and its close
    return DELIMITERS[i] + text + DELIMITERS[i + 1]


# Valid JSON that Python's json module still refuses: nesting past the recursion limit, integers past
# sys.get_int_max_str_digits().
_HUGE_VALUES = ["[" * 3000 + "]" * 3000, '{"a": ' * 2000 + "1" + "}" * 2000, "9" * 5000, "-" + "1" * 4400]


def _wrong_type(text: str, rng: random.Random) -> str:
    """Arguments of the wrong type, or too deep or too long for the JSON decoder."""
    value = rng.choice(_PIECES + _HUGE_VALUES)
    return text.replace('"arguments": {', f'"arguments": {value}, "x": {{', 1)


MUTATIONS = {
    "truncate": lambda text, rng: text[: rng.randint(0, len(text))],
    "duplicate_delimiter": _duplicate_delimiter,
    "delete_delimiter": _delete_delimiter,
    "break_json": _break_json,
    "insert": _insert,
    "nest": _nest,
    "wrong_type": _wrong_type,
}


def mutate(text: str, rng: random.Random) -> str:
    """One to three random mutations of a (usually valid) action."""
    for kind in rng.choices(sorted(MUTATIONS), k=rng.randint(1, 3)):
        text = MUTATIONS[kind](text, rng)
    return text


def generate(rng: random.Random) -> str:
    """Text from scratch: delimiters, JSON pieces and unicode in random order."""
    parts = [rng.choice(FRAGMENTS) if rng.random() < 0.6 else unicode_text(rng, 12) for _ in range(30)]
    return "".join(parts[: rng.randint(0, 30)])


N_MUTATED, N_GENERATED = 8, 3


@st.composite
def action_batches(draw: st.DrawFn) -> list[str]:
    """A valid action from hypothesis, then mutations of it and actions from scratch, from a drawn seed.

    Drawing each mutation through hypothesis cost ~8 ms an action; a seeded expansion keeps 10,000+ actions
    within seconds, and the seed is part of the (reproducible, reported) failing example.
    """
    base = draw(valid_actions())
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    return [
        base,
        *(mutate(base, rng) for _ in range(N_MUTATED)),
        *(generate(rng) for _ in range(N_GENERATED)),
    ]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

HERMES = HermesFormat()
TAGS = TagsFormat(TOOL_NAMES, param_names={"calculator": "expression", "boom": "x", "hang": "x"})


def check_parse(fmt: HermesFormat | TagsFormat, action: str) -> None:
    parsed = fmt.parse(action)
    for c in parsed.calls:
        assert isinstance(c.name, str) and c.name and c.name == c.name.strip()
        assert isinstance(c.arguments, dict)
        if fmt is TAGS:  # one string argument, the stripped text between the tags
            assert c.name in TOOL_NAMES and list(c.arguments) == [TAGS.param_names[c.name]]
            assert c.arguments[TAGS.param_names[c.name]] in action
    numbers = []
    for e in parsed.errors:
        assert e.startswith("malformed tool call #"), e
        numbers.append(int(e.split("#")[1].split(":")[0]))
    assert len(set(numbers)) == len(numbers)
    assert all(1 <= n <= len(parsed.calls) + len(parsed.errors) for n in numbers)
    assert parsed.answer is None or (parsed.answer in action and "<answer>" in action)


def _is_syntax_error(error: str) -> bool:
    return error.startswith(("malformed tool call", "unknown tool", "invalid arguments"))


def check_record(record, content: str | None) -> None:
    """One tool-call record and its observation (None when the turn budget dropped it), by tool."""
    assert record.ok == (record.error is None)
    if content is not None:
        assert isinstance(content, str) and content.encode("utf-8").decode("utf-8") == content
        assert record.ok or content.startswith("Error"), content
    if record.name == PARSE_ERROR_NAME:
        assert record.error.startswith("malformed tool call #")
    elif record.name not in TOOL_NAMES:
        assert record.error.startswith(f"unknown tool '{record.name}'")
    elif record.name == "boom":
        assert "failed: RuntimeError: kaput" in record.error or _is_syntax_error(record.error)
    elif record.name == "hang":
        assert f"timed out after {TIMEOUT_S:g} s" in record.error or _is_syntax_error(record.error)
    elif content is not None and record.ok and record.name == "calculator":
        assert math.isfinite(float(content))
    elif content is not None and record.ok and record.name == "search":
        assert content == "No results." or content.startswith("(1) ")


def check_step(env: ToolEnv, action: str) -> tuple:
    """One env step against what the format parses from the action; returns the step's call records."""
    parsed = env.fmt.parse(action)
    step = env.step(action)
    if parsed.answer is not None:  # the answer wins: calls in the same action are not run
        assert step.done and step.finish_reason == "answer" and step.answer == parsed.answer
        assert step.calls == () and step.observations == ()
    elif not parsed.calls and not parsed.errors:
        assert step.done and step.finish_reason == "no_action" and step.calls == ()
    else:
        assert len(step.calls) == len(parsed.calls) + len(parsed.errors)
        if step.done:  # the turn budget ran out: calls ran, observations are dropped
            assert step.finish_reason == "max_turns" and step.observations == ()
            contents: list[str | None] = [None] * len(step.calls)
        else:
            assert len(step.observations) == len(step.calls)
            assert all(o["role"] == "tool" for o in step.observations)
            contents = [o["content"] for o in step.observations]
        for record, content in zip(step.calls, contents, strict=True):
            check_record(record, content)
    return step.calls


def check_result(env: ToolEnv, records: list, turns: int) -> None:
    """The episode's metrics agree with its records; the Agent-R1 reward stays in [-1, 1]."""
    result = env.result()
    assert result.metrics["n_calls"] == len(records) and result.metrics["turns"] == turns
    syntax_ok = not any(_is_syntax_error(r.error or "") for r in records)
    assert result.metrics["tool_syntax_ok"] == float(syntax_ok)
    assert -1.0 <= result.reward <= 1.0


def run_actions(env: ToolEnv, actions: list[str]) -> int:
    """Feed every action, starting a new episode whenever one ends; returns the number of actions fed."""
    env.reset(ROW)
    records: list = []
    turns = 0
    for action in actions:
        note(f"action: {action!r:.2000}")
        records += check_step(env, action)
        turns += 1
        if env.done:
            check_result(env, records, turns)
            env.reset(ROW)
            records, turns = [], 0
    check_result(env, records, turns)
    return len(actions)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_valid_calls_round_trip() -> None:
    """Well-formed calls between plain text parse back to exactly the calls written, in order."""
    seen = []

    @settings(FUZZ, max_examples=500)
    @given(st.lists(calls(), min_size=1, max_size=4), st.lists(PLAIN, min_size=5, max_size=5))
    def check(written: list[ToolCall], texts: list[str]) -> None:
        hermes = "".join(t + hermes_text(c) for t, c in zip(texts, written, strict=False)) + texts[-1]
        assert HERMES.parse(hermes) == ParsedAction(tuple(written), (), None)
        known = [c for c in written if c.name in TAGS.tool_names]
        tags = "".join(t + f"<{c.name}>{t.strip()}</{c.name}>" for t, c in zip(texts, known, strict=False))
        expected = [
            ToolCall(c.name, {TAGS.param_names[c.name]: t.strip()})
            for t, c in zip(texts, known, strict=False)
        ]
        assert TAGS.parse(tags) == ParsedAction(tuple(expected), (), None)
        seen.append(1)

    check()
    assert len(seen) == 500


def test_formats_never_raise() -> None:
    """Both formats parse 12,000 generated and mutated actions into calls, numbered errors and an answer."""
    fed = []

    @settings(FUZZ, max_examples=1000)
    @given(action_batches())
    def check(actions: list[str]) -> None:
        for action in actions:
            note(f"action: {action!r:.2000}")
            check_parse(HERMES, action)
            check_parse(TAGS, action)
        fed.append(len(actions))

    check()
    assert sum(fed) == 1000 * (1 + N_MUTATED + N_GENERATED) >= 10_000


@pytest.mark.parametrize("fmt", ["hermes", "tags"])
def test_env_steps_never_raise(fmt: str) -> None:
    """12,000 generated and mutated actions through ToolEnv with real tools: every step well-formed."""
    fed = []

    @settings(FUZZ, max_examples=1000)
    @given(action_batches(), st.integers(1, 3))
    def check(actions: list[str], max_turns: int) -> None:
        fed.append(run_actions(make_env(fmt, max_turns), actions))

    check()
    assert sum(fed) == 1000 * (1 + N_MUTATED + N_GENERATED) >= 10_000


# ---------------------------------------------------------------------------------------------
# The linear-time scanners against the simple quadratic versions they replaced
# ---------------------------------------------------------------------------------------------


def reference_answer(text: str) -> str | None:
    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return found[-1].strip() if found else None


def reference_blocks(text: str, open_tag: str, close_tag: str) -> list:
    """The str.find loop parsing.py used before (quadratic in the number of unclosed tags)."""
    blocks: list = []
    pos = 0
    while True:
        o, c = text.find(open_tag, pos), text.find(close_tag, pos)
        if o == -1 and c == -1:
            return blocks
        if o == -1 or (c != -1 and c < o):
            blocks.append((c, None, f"found {close_tag} without a matching {open_tag}"))
            pos = c + len(close_tag)
            continue
        start = o + len(open_tag)
        c, nxt = text.find(close_tag, start), text.find(open_tag, start)
        if c == -1 or (nxt != -1 and nxt < c):
            blocks.append((o, None, f"unclosed {open_tag} (missing {close_tag})"))
            if nxt == -1:
                return blocks
            pos = nxt
            continue
        blocks.append((o, text[start:c], None))
        pos = c + len(close_tag)


def test_scanners_match_reference() -> None:
    seen = []

    @settings(FUZZ, max_examples=300)
    @given(action_batches())
    def check(actions: list[str]) -> None:
        for action in actions:
            assert extract_answer(action) == reference_answer(action)
            for tag in ("tool_call", "search", "answer"):
                assert _scan_blocks(action, f"<{tag}>", f"</{tag}>") == reference_blocks(
                    action, f"<{tag}>", f"</{tag}>"
                )
        seen.append(len(actions))

    check()
    assert sum(seen) == 300 * (1 + N_MUTATED + N_GENERATED)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"name": "search", "arguments": ' + "[" * 3000 + "]" * 3000 + "}", "nested too deeply"),
        ('{"name": "search", "arguments": {"query": ' + "9" * 5000 + "}}", "a number has too many digits"),
        ('{"name": "search", "arguments": "' + "[" * 3000 + '"}', "not a JSON object"),
        ('{"name": "s\\ud800", "arguments": {}}', "unpaired surrogate"),
    ],
)
def test_json_the_decoder_refuses_is_a_parse_error(body: str, why: str) -> None:
    """These raised ValueError/RecursionError out of HermesFormat.parse, or (the lone surrogate) made an
    unknown-tool observation that cannot be encoded as UTF-8 for the tokenizer."""
    parsed = HERMES.parse(f"<tool_call>{body}</tool_call>")
    assert parsed.calls == () and len(parsed.errors) == 1 and why in parsed.errors[0]
    paired = HERMES.parse('<tool_call>{"name": "s\\ud83d\\ude00", "arguments": {}}</tool_call>')
    assert paired.calls == (ToolCall("s\U0001f600", {}),)  # a paired escape is a valid emoji


def test_thousands_of_unclosed_tags() -> None:
    text = "<tool_call>" * 20_000 + "<answer>" * 20_000
    parsed = HERMES.parse(text)
    assert len(parsed.errors) == 20_000 and parsed.answer is None
    assert parsed.errors[-1] == "malformed tool call #20000: unclosed <tool_call> (missing </tool_call>)"
