"""The general env protocol in messages: a text game (examples/guess_number.py) driven by the rollout engine,
its return as the episode's reward, named reward components and metrics logged, bad return types caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from arlkit.config import load_config
from arlkit.envs.message_env import EnvStep, MessageEnvEpisode, episode_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.tasks import build_task

ROOT = Path(__file__).parents[1]


@pytest.fixture()
def game(monkeypatch):
    monkeypatch.chdir(ROOT)  # where the example's import path starts
    cfg = load_config(None, ["task.name=examples.guess_number:GuessNumber", "task.max_turns=3"])
    return build_task(cfg.task)


def _play(env, row: dict, guesses: list[str]):
    episode = episode_env(env)
    episode.reset(row)
    steps = [episode.step(g) for g in guesses]
    return steps, episode.result()


def test_the_return_is_the_reward_and_components_and_metrics_are_named(game) -> None:
    row = {"id": 0, "question": "Guess.", "answer": 7}
    steps, result = _play(game.make_env(), row, ["5", "9", "7"])
    assert [s.messages for s in steps[:2]] == [
        ({"role": "user", "content": "Higher."},),
        ({"role": "user", "content": "Lower."},),
    ]
    assert steps[-1].done and not steps[0].done
    # two wrong guesses at 0.05 each, then the solve: -0.05 - 0.05 + 1.0
    assert result.reward == pytest.approx(0.9)
    assert result.metrics["em"] == 1.0
    assert result.metrics["reward/solved"] == 1.0 and result.metrics["reward/step_cost"] == pytest.approx(
        -0.1
    )
    _, lost = _play(game.make_env(), row, ["1", "2", "3"])  # out of turns: em 0, three costs
    assert lost.reward == pytest.approx(-0.15) and lost.metrics["em"] == 0.0


def test_a_tool_env_is_driven_as_it_is_and_its_steps_read_as_the_protocols(tiny) -> None:
    env = tiny.task.make_env()
    assert episode_env(env) is env and isinstance(env, ToolEnv)
    env.reset(tiny.task.rows("train", 1)[0])
    step = env.step("<answer> x</answer>")
    assert step.messages == () and step.done and step.info["answer"] == "x"


class _Broken:
    def __init__(self, reset_value, step_value):
        self.reset_value, self.step_value = reset_value, step_value

    def reset(self, row):
        return self.reset_value

    def step(self, message):
        return self.step_value


def test_wrong_types_stop_at_reset_and_end_the_episode_as_an_env_error_mid_run(tiny) -> None:
    with pytest.raises(ArlkitError, match="reset\\(\\) must return a list of messages"):
        episode_env(_Broken("hello", None)).reset({})
    hello = [{"role": "user", "content": "hi"}]
    for bad in [("not", "four"), (hello, float("nan"), False, {}), (hello, 1.0, False, "info")]:
        ep = Episode(_Broken(hello, bad), tiny.tokenizer, {"id": 1}, 0, RolloutParams(max_turns=2))
        ep.advance(tiny.tokenizer.encode("5", add_special_tokens=False))
        assert ep.done and ep.traj.metadata["finish_reason"] == "env_error"
        assert "step()" in ep.traj.metadata["env_error"]
    with pytest.raises(TypeError, match="is not an env"):
        episode_env(object())
    assert isinstance(episode_env(_Broken(hello, EnvStep(hello, 0.0, True, {}))), MessageEnvEpisode)


def test_pass_at_k_t_says_a_message_env_has_no_tool_rounds_to_cap(game) -> None:
    from arlkit.eval.sampling import capped_env

    assert capped_env(game.make_env, None, 1) == game.make_env  # PASS@k without a cap runs it as it is
    with pytest.raises(ArlkitError, match=r"passk\.caps: .*GuessEnv.* no tool rounds"):
        capped_env(game.make_env, 2, 1)


def test_ray_tool_actors_say_a_message_env_has_no_tools(game) -> None:
    from arlkit.config import RayConfig
    from arlkit.tasks.remote import with_ray_tools

    assert with_ray_tools(game, RayConfig()) is game  # ray off: the task as it is
    with pytest.raises(ArlkitError, match=r"ray\.enabled .*GuessEnv.* has no tools"):
        with_ray_tools(game, RayConfig(enabled=True))


def test_the_game_example_trains_by_the_command_line(tiny, tmp_path) -> None:
    run = tmp_path / "run"
    args = [
        "examples/guess_number.yaml",
        f"model.path={tiny.sft_dir}",
        f"train.run_dir={run}",
        "train.device=cpu",
        "train.steps=2",
        "task.n_eval=2",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=8",
    ]
    proc = run_cli("train", *args, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in logged if "rollout/reward" in m)
    assert step["rollout/reward/step_cost"] < 0  # the random-ish tiny policy guesses wrong and pays
    assert "solved" in proc.stdout  # the task's em_label
