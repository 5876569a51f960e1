"""Every algorithm through the real loop on the tiny fixture model: finite losses, the right parameters move,
critics learn, DAPO pieces act, process rewards reach the right tokens."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.train.loop import collect, setup, shaped_rewards, train_step
from arlkit.trajectory import collate


def _setup(tiny, tmp_path, *extra: str):
    return setup(
        load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", *extra)), Console(quiet=True)
    )


def _params(s) -> dict[str, torch.Tensor]:
    named = dict(s.policy.model.named_parameters())
    if s.policy.critic is not None:
        named.update({f"critic.{k}": v for k, v in s.policy.critic.named_parameters()})
    if s.policy.value_head is not None:
        named.update({f"head.{k}": v for k, v in s.policy.value_head.named_parameters()})
    return {k: v.detach().clone() for k, v in named.items()}


def _finite(metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, bad


@pytest.mark.parametrize(
    "extra",
    [
        ["algo.advantage=grpo"],
        ["algo.advantage=dr_grpo", "algo.aggregation=seq_mean_token_sum_norm"],
        ["algo.advantage=rloo", "algo.policy_loss=reinforce"],
        ["algo.advantage=reinforce_pp", "algo.kl_coef=0.01", "algo.kl_mode=reward", "algo.kl_estimator=k1"],
        ["algo.advantage=reinforce_pp_baseline", "algo.kl_coef=0.01", "algo.kl_estimator=k2"],
        ["algo.advantage=remax"],
        ["algo.advantage=grpo", "algo.policy_loss=gspo", "algo.clip_low=3e-4", "algo.clip_high=4e-4"],
        ["algo.advantage=grpo", "algo.epochs=2", "algo.mini_batches=2", "algo.micro_batch_size=3"],
    ],
    ids=[
        "grpo",
        "dr_grpo",
        "rloo-reinforce",
        "reinforce_pp-klreward",
        "rpp_baseline",
        "remax",
        "gspo",
        "ppo-epochs",
    ],
)
def test_every_algorithm_runs_finite_and_moves_the_policy(tiny, tmp_path, extra) -> None:
    s = _setup(tiny, tmp_path, "train.seed=3", *extra)
    before = _params(s)
    metrics = [train_step(s, 1), train_step(s, 2)]
    for m in metrics:
        _finite(m)
        for key in (
            "actor/pg_loss",
            "actor/entropy",
            "actor/approx_kl",
            "actor/clip_frac",
            "actor/grad_norm",
        ):
            assert key in m, key
    after = _params(s)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_off_policy_epochs_use_a_fixed_old_policy(tiny, tmp_path) -> None:
    # two epochs: the second sees ratios != 1 against π_old, so the clip statistics become informative
    s = _setup(tiny, tmp_path, "algo.epochs=3", "algo.lr=5e-2", "train.seed=3")
    m = train_step(s, 1)
    assert m["actor/ratio_mean"] != pytest.approx(1.0, abs=1e-6)
    assert m["actor/approx_kl"] > 0


@pytest.mark.parametrize("kind", ["separate", "value_head"])
def test_ppo_with_critic_moves_every_parameter(tiny, tmp_path, kind) -> None:
    s = _setup(
        tiny,
        tmp_path,
        "algo.advantage=gae",
        "algo.lam=0.95",
        f"critic.kind={kind}",
        "critic.lr=1e-2",
        "train.seed=3",
    )
    before = _params(s)
    m1, m2 = train_step(s, 1), train_step(s, 2)
    for m in (m1, m2):
        _finite(m)
        for key in (
            "critic/value_loss",
            "critic/explained_variance",
            "critic/values_mean",
            "critic/vf_clip_frac",
        ):
            assert key in m, key
    after = _params(s)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], unchanged
    assert m1["critic/values_mean"] == pytest.approx(0.0, abs=1e-6)  # zero-initialised head: V = 0 at start
    if kind == "separate":
        assert "critic/grad_norm" in m1


def test_critic_warmup_keeps_the_actor_still(tiny, tmp_path) -> None:
    s = _setup(
        tiny,
        tmp_path,
        "algo.advantage=gae",
        "critic.kind=value_head",
        "critic.warmup_steps=1",
        "train.seed=3",
    )
    before = _params(s)
    m = train_step(s, 1)
    after = _params(s)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"head.linear.weight", "head.linear.bias"}
    assert "actor/pg_loss" not in m and "critic/value_loss" in m


def test_gae_without_a_critic_fails_at_load_naming_the_field() -> None:
    with pytest.raises(ArlkitError, match=r"critic\.kind"):
        load_config(None, ["algo.advantage=gae"])
    with pytest.raises(ArlkitError, match=r"algo\.advantage.*valid: .*grpo"):
        load_config(None, ["algo.advantage=ppo2"])


def test_dynamic_sampling_keeps_only_groups_with_varied_rewards(tiny, tmp_path) -> None:
    s = _setup(
        tiny,
        tmp_path,
        "algo.dynamic_sampling=true",
        "algo.max_sampling_rounds=4",
        "rollout.prompts_per_step=3",
        "train.seed=5",
    )
    got = collect(s)
    by_group: dict[int, list[float]] = {}
    for t in got.trajectories:
        by_group.setdefault(t.group_id, []).append(t.total_reward)
    assert len(by_group) <= 3 and all(len(v) == 4 for v in by_group.values())
    assert all(max(v) > min(v) for v in by_group.values())  # every kept group has varied rewards
    assert 1 <= got.rounds <= 4
    # each round asks for exactly the missing groups: every prompt drawn was either kept or dropped
    assert s.cursor == len(by_group) + got.groups_dropped


def test_overlong_penalty_counts_generated_tokens_only(tiny, tmp_path) -> None:
    # a buffer of 10 of the 12-token budget frees only 2 tokens, so any row past its first turn's 2 tokens pays:
    # the case does not hang on how long the random model's episodes happen to be on this machine
    s = _setup(tiny, tmp_path, "algo.overlong_buffer=10", "rollout.max_new_tokens=4", "train.seed=1")
    batch = collate(collect(s).trajectories, s.policy.tokenizer.pad_token_id)
    shaped = shaped_rewards(s, batch, None, None)
    # budget = 3 turns × 4 tokens = 12, free up to 12 - 10 = 2 generated tokens: penalty -(n-2)/10, floored at -1;
    # observation tokens do not count
    n_gen = batch.loss_mask.sum(-1)
    expected = -((n_gen - 2).clamp(min=0) / 10).clamp(max=1)
    assert torch.allclose((shaped - batch.token_rewards).sum(-1), expected)
    assert (expected < 0).any()  # the case is not vacuous
    last = (batch.loss_mask * torch.arange(batch.loss_mask.shape[1])).argmax(-1)
    moved = (shaped != batch.token_rewards).nonzero()
    assert all(int(c) == int(last[r]) for r, c in moved)  # only on each row's last generated token


def test_process_reward_lands_on_the_last_token_of_the_rewarded_action(task, tokenizer, rows_by_kind) -> None:
    from arlkit.envs.qa import gold_retrieval_reward, make_qa_env

    row = rows_by_kind["2hop"][0]
    env = make_qa_env(
        [task.search],
        fmt="hermes",
        max_turns=3,
        system_prompt=None,
        show_tool_schemas=False,
        process_reward=gold_retrieval_reward(0.25),
    )
    ep = Episode(env, tokenizer, row, group_id=0, params=RolloutParams(max_turns=3, max_length=4000))
    hop = row["hops"][0]
    actions = [
        f'<tool_call>{{"name": "search", "arguments": {{"query": " {hop}"}}}}</tool_call>',  # finds the gold doc
        '<tool_call>{"name": "search", "arguments": {"query": " zzz"}}</tool_call>',  # finds nothing gold
        f"<answer> {row['answer']}</answer>",
    ]
    for text in actions:
        ep.advance(
            tokenizer.encode(text, add_special_tokens=False)
            + ([tokenizer.eos_token_id] if "answer" in text else [])
        )
    traj = ep.traj
    assert [t.reward for t in traj.turns] == [0.25, 0.0, 0.0] and traj.reward == 1.0
    rewards = collate([traj], tokenizer.pad_token_id).token_rewards[0]
    first = traj.turns[0]
    nonzero = torch.nonzero(rewards).flatten().tolist()
    assert nonzero == [
        first.end - 1,
        traj.turns[-1].end - 1,
    ]  # the closing </tool_call> id, the last answer id
    assert (
        rewards[first.end - 1] == 0.25 and traj.roles[first.end - 1] == 2
    )  # ACTION: the call's closing delimiter
    assert rewards[traj.turns[-1].end - 1] == 1.0


@pytest.mark.parametrize("rule", ["group_uniform", "all_failed_trajectory"])
def test_tao_rl_filters_and_shapes_in_the_loop(tiny, tmp_path, rule) -> None:
    s = _setup(tiny, tmp_path, "tao.enabled=true", f"tao.tool_filter={rule}", "tao.alpha=0.5", "train.seed=3",
               "rollout.prompts_per_step=4")  # fmt: skip
    m = train_step(s, 1)
    _finite(m)
    assert m["tao/groups_in"] == 4
    dropped = sum(
        m.get(f"tao/{k}", 0)
        for k in ("dropped_low_std", "dropped_all_overlong", "dropped_few_valid", "dropped_tool_uniform")
    )
    assert m["tao/groups_kept"] == 4 - dropped
    if m["tao/groups_kept"] > 0:
        assert 0.0 <= m["tao/shaped_token_share"] <= 1.0 and m["tao/mean_abs_shift"] >= 0.0
    else:
        assert m["actor/skipped_step"] == 1.0


def test_tao_filter_rules_on_real_trajectories(tiny, tmp_path) -> None:
    from arlkit.config import TaoConfig
    from arlkit.train.filters import tao_filter

    s = _setup(tiny, tmp_path, "rollout.prompts_per_step=4", "train.seed=3")
    trajs = collect(s).trajectories
    res = tao_filter(
        trajs, TaoConfig(enabled=True, tool_filter="all_failed_trajectory", tool_filter_strength=1.0)
    )
    kept_groups = {t.group_id for t in res.trajectories}
    for g in {t.group_id for t in trajs}:
        rewards = [t.total_reward for t in trajs if t.group_id == g]
        valid = [t for t in trajs if t.group_id == g and not t.overlong]
        expect = (max(rewards) - min(rewards) > 1e-3) and len(valid) >= 4
        assert (g in kept_groups) == expect, (g, rewards, len(valid))
    for t, w in zip(res.trajectories, res.loss_weights, strict=True):
        calls, ok = t.tool_calls
        assert w == (0.0 if calls > 0 and ok == 0 else 1.0)


def test_loss_roles_restrict_training_to_action_tokens(tiny, tmp_path) -> None:
    from arlkit.train.loop import loss_weighted

    for seed in range(3, 13):  # the lightly trained fixture emits a tool call in some batches only
        s = _setup(tiny, tmp_path / str(seed), "algo.loss_roles=[action]", f"train.seed={seed}")
        batch = collate(collect(s).trajectories, s.policy.tokenizer.pad_token_id)
        if (batch.loss_mask * (batch.roles == 2)).any():
            break
    weighted = loss_weighted(s, batch, None)
    assert torch.equal(weighted.loss_mask, batch.loss_mask * (batch.roles == 2).float())
    assert weighted.loss_mask.sum() > 0 and weighted.loss_mask.sum() < batch.loss_mask.sum()
    _finite(train_step(s, 1))
