"""Gymnasium text environments (envs/gym_text.py, the `gymnasium` task) with the real gymnasium package:
examples/gym_corridor.py played by hand, bad actions and ids, and trained by `arlkit train`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import train_example
from gymnasium import spaces  # the `gym` extra, which `make install` installs: tested, never skipped
from test_sft_conversations import spans_for

from arlkit.config import load_config
from arlkit.envs.gym_text import GymTextEnv
from arlkit.envs.message_env import episode_env
from arlkit.errors import ArlkitError
from arlkit.tasks import build_task
from arlkit.train.conversations import conversation_trajectories, load_conversations
from arlkit.trajectory import GENERATED_ROLES

ROOT = Path(__file__).parents[1]
CORRIDOR = "task.env_id=examples.gym_corridor:Corridor-v0"


@pytest.fixture()
def corridor(monkeypatch):
    monkeypatch.chdir(ROOT)  # where the example's module path starts
    return build_task(load_config(None, ["task.name=gymnasium", CORRIDOR, "task.max_turns=4"]).task)


def test_a_game_played_through_the_adapter(corridor) -> None:
    rows = corridor.rows("train", 3)
    assert rows == corridor.rows("train", 3)  # seeded
    assert {r["seed"] for r in rows}.isdisjoint({r["seed"] for r in corridor.rows("heldout", 50)})
    env = episode_env(corridor.make_env())
    first = env.reset({"seed": 0})[0]["content"]
    start = int(first.split("room ")[1].split(";")[0])
    steps = [env.step("I go right.") for _ in range(4 - start)]  # exit is room 4
    assert [s.done for s in steps] == [False] * (3 - start) + [True]
    result = env.result()
    assert result.reward == 1.0  # only the exit pays
    assert result.metrics["em"] == 1.0 and result.metrics["invalid_actions"] == 0.0


def test_an_action_outside_the_action_space_is_feedback_and_turns_run_out() -> None:
    from examples.gym_corridor import Corridor

    game = Corridor()
    game.action_space = spaces.Text(max_length=5)  # letters and digits only: "go left" is not an action
    env = episode_env(GymTextEnv(game, instructions="Walk.", max_turns=2))
    assert env.reset({"seed": 1})[0]["content"].startswith("Walk.\n\nYou are in room")
    step = env.step("go left")
    assert not step.done and "Invalid action 'go left'" in step.messages[0]["content"]
    assert env.step("left").done  # the second turn of two
    result = env.result()
    assert result.metrics["invalid_actions"] == 1.0 and result.metrics["em"] == 0.0


def test_an_env_id_gymnasium_cannot_make_fails_at_load(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(ArlkitError, match=r"task\.env_id.*NoSuchGame-v0"):
        build_task(load_config(None, ["task.name=gymnasium", "task.env_id=NoSuchGame-v0"]).task)
    with pytest.raises(ArlkitError, match=r"task\.env_id"):
        load_config(None, ["task.name=gymnasium"])  # required


def test_the_gym_example_trains_by_the_command_line(tiny, tmp_path) -> None:
    run = train_example("examples/gym_corridor.yaml", tiny.sft_dir, tmp_path)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in logged if "rollout/reward" in m)
    assert "rollout/env/invalid_actions" in step and "rollout/env/is_success" in step


@pytest.mark.parametrize("script", ["gym_corridor_chats.py", "letter_count_chats.py"])
def test_the_example_conversation_writers_give_sft_data(script, tiny, tmp_path) -> None:
    """The examples' conversation writers print JSONL that `arlkit sft sft.data=` loads and renders with a
    real tokenizer, one segment per conversation, generated tokens on the assistant turns; the corridor's
    walks replay move for move in the game."""
    out = subprocess.run(
        [sys.executable, script, "12"], cwd=ROOT / "examples", capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    data = tmp_path / "chats.jsonl"
    data.write_text(out.stdout)
    convs = load_conversations(data)
    assert len(convs) == 12
    trajs = conversation_trajectories(convs, tiny.tokenizer, spans_for(tiny.tokenizer), max_length=2048)
    assert len(trajs) == 12 and all(any(r in GENERATED_ROLES for r in t.roles) for t in trajs)
    if script.startswith("gym"):
        from examples.gym_corridor import Corridor

        for conv in convs:
            game, msgs = Corridor(), conv["messages"]
            assert game.reset(seed=None)[0]  # replay from the room the conversation starts in
            game.pos = int(msgs[0]["content"].split("room ")[1].split(";")[0])
            for k in range(1, len(msgs) - 1, 2):
                assert game.step(msgs[k]["content"])[0] == msgs[k + 1]["content"]
