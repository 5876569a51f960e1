"""The RL loop: rollout → reward → filter → advantage → update → log → evaluate → checkpoint, each a named
call on plain data."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from rich.console import Console

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.shaping import overlong_penalty, varied_groups
from arlkit.config import Config
from arlkit.errors import ArlkitError
from arlkit.eval.evaluate import eval_result, evaluate, gather_eval
from arlkit.eval.plots import plot_curves
from arlkit.models.precision import autocast
from arlkit.rollout.engine import Episode, RolloutParams, rollout, rollout_episodes
from arlkit.rollout.metrics import episode_metrics
from arlkit.train.async_rollouts import start_rollouts
from arlkit.train.branching_step import Tree, branch_advantages, branch_shapers, grow_tree
from arlkit.train.checkpoint import resume_or_start, save_checkpoint, save_state
from arlkit.train.distributed import global_sum, prompt_index, reduce_metrics, shard, shutdown
from arlkit.train.filters import Filtered, post_tool, tao_filter
from arlkit.train.guards import (
    check_finite_weights,
    env_error_metrics,
    observe_step,
    without_env_errors,
)
from arlkit.train.idle_rank import idle_step
from arlkit.train.memory import trim_heap
from arlkit.train.segments import episode_advantages, last_segments, segment_index
from arlkit.train.setup import Setup, progress, setup
from arlkit.train.shapers import Shaper, TaoEntropyShaper
from arlkit.train.update import UpdateBatch, batch_logprobs, batch_values, update
from arlkit.trajectory import Batch, Trajectory, collate, role_mask


def rollout_params(cfg: Config, temperature: float) -> RolloutParams:
    r = cfg.rollout
    return RolloutParams(cfg.task.max_turns, r.max_new_tokens, r.max_length, temperature, r.top_p)


def run_eval(s: Setup, step: int, name: str) -> dict[str, float]:
    if s.sampler is not None:  # the bf16 rollout copy evaluates the weights as they are now (after SFT too)
        s.sampler.refresh(s.policy.model)
    rows = shard(s.eval_rows, s.dist)
    if s.agents is not None:  # the user's agent, one episode per held-out row; metrics per episode
        trajs = s.agents.run(rows, list(range(len(rows))), s.cfg.rollout.eval_temperature)
        res = eval_result(last_segments(trajs))
    else:
        res = evaluate(
            s.generator,
            s.policy.tokenizer,
            s.task.make_env,
            rows,
            rollout_params(s.cfg, s.cfg.rollout.eval_temperature),
        )
    res = gather_eval(res, s.dist)
    s.run.log(step, {f"eval/{k}": v for k, v in res.metrics.items()})
    s.run.write_samples(
        step, res.trajectories[: s.cfg.train.n_samples], s.policy.tokenizer, name=f"eval_{name}"
    )
    return res.metrics


@dataclass(frozen=True)
class Collected:
    trajectories: list[Trajectory]
    rounds: int  # rollout rounds this step (1 without dynamic sampling)
    groups_dropped: int  # groups whose rewards were all equal (dynamic sampling)
    episodes: tuple[Episode, ...] = ()  # the finished episodes of `trajectories` (branching resumes them)


def _rollout_prompts(s: Setup, n_prompts: int, temperature: float) -> tuple[list[Trajectory], list[Episode]]:
    """n rollouts for each of this rank's next `n_prompts` training prompts; the group id is the prompt's
    index in the stream. The rows (one per segment of an agent's episode) and the built-in path's Episodes."""
    index = [prompt_index(s.cursor + i, s.dist) for i in range(n_prompts)]
    s.cursor += n_prompts
    prompts = [(g, s.train_rows[g % len(s.train_rows)]) for g in index]
    n = s.cfg.rollout.n
    rows = [r for _, r in prompts for _ in range(n)]
    groups = [g for g, _ in prompts for _ in range(n)]
    if s.agents is not None:  # the user's agent through the gateway
        return s.agents.run(rows, groups, temperature), []
    params = rollout_params(s.cfg, temperature)
    eps = rollout_episodes(s.generator, s.policy.tokenizer, s.task.make_env, rows, groups, params)
    return [e.traj for e in eps], eps


def collect(s: Setup) -> Collected:
    """A step's rollouts. With DAPO dynamic sampling, groups whose rewards are all equal are dropped and
    refilled from new prompts, up to `max_sampling_rounds` rounds; surplus groups are cut to keep the batch
    size, and a short batch after the last round is trained as it is (`rollout/sampling_rounds` says so)."""
    cfg = s.cfg
    want, kept, rounds, dropped = cfg.rollout.prompts_per_step // s.dist.world_size, [], 0, 0
    episodes: list[Episode] = []
    while rounds == 0 or (cfg.algo.dynamic_sampling and rounds < cfg.algo.max_sampling_rounds):
        n_groups = len({t.group_id for t in kept})
        if n_groups >= want:
            break
        trajs, eps = _rollout_prompts(s, want - n_groups, cfg.rollout.temperature)
        rounds += 1
        if cfg.algo.dynamic_sampling:
            index = torch.tensor([t.group_id for t in trajs])
            keep = varied_groups(torch.tensor([t.total_reward for t in trajs]), index - index.min()).tolist()
            dropped += len({t.group_id for t, k in zip(trajs, keep, strict=True) if not k})
            trajs = [t for t, k in zip(trajs, keep, strict=True) if k]
            eps = [e for e in eps if e.traj.group_id in {t.group_id for t in trajs}]
        kept += trajs
        episodes += eps
    first = set(list(dict.fromkeys(t.group_id for t in kept))[:want])
    trajs = [t for t in kept if t.group_id in first]
    return Collected(trajs, rounds, dropped, tuple(e for e in episodes if e.traj.group_id in first))


def greedy_baselines(s: Setup, trajs: list[Trajectory]) -> torch.Tensor:
    """(B,) reward of one greedy rollout of each row's prompt (ReMax's baseline)."""
    firsts = {t.group_id: t for t in reversed(trajs)}
    rows = [{**s.train_rows[g % len(s.train_rows)]} for g in firsts]
    params = rollout_params(s.cfg, temperature=0.0)
    greedy = rollout(s.generator, s.policy.tokenizer, s.task.make_env, rows, list(firsts), params)
    by_group = {t.group_id: t.total_reward for t in greedy}
    return torch.tensor([by_group[t.group_id] for t in trajs], dtype=torch.float32)


def shaped_rewards(
    s: Setup, batch: Batch, old_lp: torch.Tensor | None, ref_lp: torch.Tensor | None
) -> torch.Tensor:
    """(B, T) token rewards after DAPO's overlong penalty (on the last generated token) and a KL penalty in
    the reward (every generated token), when configured."""
    a, rewards = s.cfg.algo, batch.token_rewards.clone()
    if a.overlong_buffer > 0:
        n_gen = batch.loss_mask.sum(-1)
        last = (batch.loss_mask * torch.arange(batch.loss_mask.shape[1])).argmax(-1)  # (B,)
        pen = overlong_penalty(n_gen, s.cfg.token_budget, a.overlong_buffer, a.overlong_factor)
        rewards[torch.arange(len(last)), last] += pen
    if a.kl_mode == "reward" and ref_lp is not None:
        old = batch.rollout_logprobs if old_lp is None else old_lp
        rewards = rewards - a.kl_coef * KL_ESTIMATORS.get(a.kl_estimator)(old, ref_lp) * batch.loss_mask
    return rewards


def prepare(
    s: Setup,
    batch: Batch,
    baselines: torch.Tensor | None,
    segments: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> UpdateBatch:
    """The no-gradient forwards (π_old, reference, critic values), shaped rewards and advantages. `segments`:
    (episode, last) of rows that are segments of agents' episodes (train/segments.py)."""
    cfg, policy, micro, temp = s.cfg, s.policy, s.cfg.algo.micro_batching, s.cfg.rollout.temperature
    a = cfg.algo
    # stale samples (rollout.max_staleness): π_old is recomputed as the proximal policy, the weights before this
    # update (decoupled PPO, arXiv 2505.24298); the sampler's logprobs enter through algo.rollout_correction
    off_policy = a.epochs > 1 or a.mini_batches > 1 or cfg.rollout.max_staleness > 0
    need_old = off_policy or a.kl_mode == "reward"
    old_lp = batch_logprobs(policy.model, batch, temp, micro, policy.routing) if need_old else None
    ref_lp = None
    if a.kl_coef > 0:
        with policy.reference() as ref:
            ref_lp = batch_logprobs(ref, batch, temp, micro, policy.routing)
    values = batch_values(policy, batch, micro) if cfg.critic.kind != "none" else None
    params = AdvantageParams(
        a.gamma, a.lam, a.discount_unit, a.aligned_advantages, norm_by_std=a.norm_by_std, whiten=a.whiten_gae
    )
    inputs = AdvantageInputs(
        token_rewards=shaped_rewards(s, batch, old_lp, ref_lp),
        loss_mask=batch.loss_mask,
        group_index=batch.group_index,
        turn=batch.turn,
        attention_mask=batch.attention_mask,
        values=values,
        baseline_scores=baselines,
    )
    if segments is None:
        adv = ADVANTAGES.get(a.advantage)(inputs, params)
    else:
        adv = episode_advantages(ADVANTAGES.get(a.advantage), inputs, params, *segments)
    return UpdateBatch(
        batch=batch,
        advantages=adv.advantages,
        returns=adv.returns,
        old_logprobs=old_lp if off_policy else None,
        ref_logprobs=ref_lp if a.kl_mode == "loss" else None,
        old_values=values,
    )


def train_step(s: Setup, step: int) -> dict[str, float]:
    """One RL step on `prompts_per_step` prompts × `n` rollouts; returns namespaced metrics."""
    cfg = s.cfg
    t0 = time.perf_counter()
    taken = s.rollouts.take(step) if s.rollouts is not None else None  # asynchronous: the producer's buffer
    if taken is not None:
        s.cursor = taken.cursor
    got = collect(s) if taken is None else Collected(taken.trajectories, 1, 0)
    clean = without_env_errors(got.trajectories)  # an env that raised gives nothing to learn from
    filtered = tao_filter(clean, cfg.tao) if cfg.tao.enabled else None
    trajs = filtered.trajectories if filtered else clean
    per_episode = last_segments(clean)  # per-episode metrics count an agent's episode once, however segmented
    behaviour = {f"rollout/{k}": v for k, v in episode_metrics(per_episode).items()} | _tao_stats(filtered)
    behaviour |= env_error_metrics(got.trajectories)
    behaviour["rollout/sampled_tokens"] = float(sum(t.n_generated for t in got.trajectories))
    behaviour |= taken.metrics if taken is not None else {}
    tree = None
    if cfg.branching.mode != "none":  # branched rollouts join the batch (APPO, ARPO): rows, weights, metrics
        episodes = [e for e in got.episodes if "env_error" not in e.traj.metadata]
        tree = grow_tree(s, episodes, filtered, step)
        trajs, filtered = tree.trajectories, tree.filtered
        behaviour |= tree.stats
    if not global_sum(len(trajs), s.dist):  # every group was filtered out: nothing to learn from this step
        skipped = behaviour | {"actor/skipped_step": 1.0, "timing_s/rollout": time.perf_counter() - t0}
        return reduce_metrics(skipped, len(got.trajectories), s.dist)
    if not trajs:  # only this rank's groups were: it joins the others' gradient sums with no rows
        return idle_step(s, step > cfg.critic.warmup_steps, behaviour, len(got.trajectories))
    baselines = (
        greedy_baselines(s, trajs)
        if ADVANTAGES.info(cfg.algo.advantage).get("needs_greedy_baseline")
        else None
    )
    if cfg.train.trim_heap:  # the update starts from what the rollout kept, not from what it freed
        trim_heap()
    t1 = time.perf_counter()
    batch = collate(trajs, s.policy.tokenizer.pad_token_id)
    train_actor = step > cfg.critic.warmup_steps
    with autocast(s.dist.device, cfg.train.precision):
        by_episode = cfg.rollout.gateway.segment_advantage == "episode"
        data = prepare(s, batch, baselines, segment_index(trajs) if by_episode else None)
    data = replace(
        data, batch=loss_weighted(s, batch, filtered), shapers=build_shapers(s, batch, trajs, tree)
    )
    if tree:
        data = branch_advantages(s.cfg.branching, data, tree)
    t2 = time.perf_counter()
    with autocast(s.dist.device, cfg.train.precision):
        stats = update(
            s.policy,
            s.opts,
            data,
            cfg.algo,
            cfg.critic,
            cfg.rollout.temperature,
            s.rng,
            cfg.algo.norm_constant or cfg.token_budget,
            train_actor,
            s.sync,
        )
    # the rollout copy (bf16, or the vLLM server) gets the weights just trained; asynchronous producers on the
    # vLLM server get them when the loop publishes the step's version
    if s.sampler is not None and not (s.rollouts is not None and s.rollouts.server is s.sampler):
        s.sampler.refresh(s.policy.model)
    if cfg.train.trim_heap:
        trim_heap()
    t3 = time.perf_counter()
    metrics = behaviour | step_metrics(trajs, data, stats.actor, stats.critic)
    metrics |= s.sampler.metrics() if hasattr(s.sampler, "metrics") else {}
    metrics |= s.agents.metrics() if s.agents is not None else {}
    metrics.update(
        {
            "rollout/sampling_rounds": got.rounds,
            "rollout/groups_dropped": got.groups_dropped,
            "actor/lr": s.opts.actor_schedule.get_last_lr()[0],
            "timing_s/rollout": t1 - t0,
            "timing_s/prepare": t2 - t1,
            "timing_s/update": t3 - t2,
            "perf/gen_tokens_per_s": float(batch.loss_mask.sum()) / max(t1 - t0, 1e-9),
            "perf/update_tokens_per_s": float(batch.attention_mask.sum()) / max(t3 - t1, 1e-9),
        }
    )
    if cfg.train.n_samples:  # with each token's advantage as estimated (before per-micro-batch shapers)
        n = cfg.train.n_samples
        s.run.write_samples(step, trajs[:n], s.policy.tokenizer, advantages=data.advantages[:n].cpu())
    return reduce_metrics(metrics, len(got.trajectories), s.dist)


def loss_weighted(s: Setup, batch: Batch, filtered: Filtered | None) -> Batch:
    """The batch with its loss mask weighted for the update (after advantages, which keep every generated
    token on their time axis): TAO-RL's per-trajectory weights and CEA's role restriction (`algo.loss_roles`)."""
    mask = batch.loss_mask
    if filtered:
        mask = mask * torch.tensor(filtered.loss_weights)[:, None]
    if len(s.cfg.algo.loss_roles) < 3:
        mask = mask * role_mask(batch.roles, s.cfg.algo.loss_roles)
    return replace(batch, loss_mask=mask)


def build_shapers(
    s: Setup, batch: Batch, trajs: list[Trajectory], tree: Tree | None = None
) -> tuple[Shaper, ...]:
    """The per-micro-batch advantage shapers the config asks for, in the order they apply."""
    shapers: list[Shaper] = []
    tao = s.cfg.tao
    if tao.enabled and tao.entropy_shaping:
        code = tao.reading == "code"
        shapers.append(TaoEntropyShaper(post_tool(batch, trajs), tao.alpha, tao.tool_aware_only, code))
    return tuple(shapers) + (branch_shapers(s.cfg.branching) if tree else ())


def _tao_stats(filtered: Filtered | None) -> dict[str, float]:
    return {f"tao/{k}": v for k, v in filtered.stats.items()} if filtered else {}


def step_metrics(
    trajs: list[Trajectory], data: UpdateBatch, actor: dict[str, float], critic: dict[str, float]
) -> dict[str, float]:
    """Namespaced metrics of the trained batch: advantage statistics, actor and critic stats."""
    mask = data.batch.loss_mask > 0
    adv = data.advantages[mask]
    scores = torch.tensor([t.total_reward for t in trajs])
    metrics: dict[str, float] = {}
    metrics.update({k if "/" in k else f"actor/{k}": v for k, v in actor.items()})  # shapers name their own
    metrics.update({f"critic/{k}": v for k, v in critic.items()})
    metrics["rollout/logprob_diff"] = metrics.pop("actor/logprob_diff", float("nan"))
    metrics.update(
        {
            "rollout/score_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "rollout/advantage_mean": float(adv.mean()) if adv.numel() else 0.0,
            "rollout/advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
            "rollout/advantage_abs_mean": float(adv.abs().mean()) if adv.numel() else 0.0,
            "rollout/advantage_max": float(adv.max()) if adv.numel() else 0.0,
            "rollout/advantage_min": float(adv.min()) if adv.numel() else 0.0,
        }
    )
    return metrics


def train(
    cfg: Config, console: Console | None = None, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run RL as configured; evaluates before and after. Returns the summary also written to summary.json.
    `resume`: continue from the run folder's newest complete checkpoint (train/checkpoint.py); `overwrite`:
    delete the run the folder holds first. Without either, a folder that holds a run is refused.

    Raises:
        ArlkitError: both flags, or a run folder that holds a run without either (and what `setup` raises).
    """
    if resume and overwrite:
        raise ArlkitError("--resume continues the run in train.run_dir, --overwrite deletes it: give one")
    console = console or Console()
    t_start = time.perf_counter()
    s = setup(cfg, console, run_mode="resume" if resume else "overwrite" if overwrite else "new")
    if overwrite and s.dist.is_main and s.run.cleared:
        console.print(f"--overwrite: deleted the previous run's {', '.join(s.run.cleared)} in {s.run.path}")
    console = console if s.dist.is_main else Console(quiet=True)
    console.print(f"[bold]run folder[/] {s.run.path}  ·  held-out questions: {len(s.eval_rows)}")
    state = resume_or_start(s, console, resume)
    # what a producer had buffered at the checkpoint was dropped; it regenerates from the saved cursor
    s.rollouts = start_rollouts(s, state.step + 1) if cfg.rollout.max_staleness else None
    fresh_base = state.step == 0 and cfg.task.n_eval and cfg.train.eval_base
    base = run_eval(s, 0, "base") if fresh_base else s.run.eval_metrics(0)
    # tokens sampled before a resumed checkpoint, read back from its (rewound) log: the generation budget counts
    # the whole run, not just the part since the restart
    sampled = sum(
        r.get("rollout/sampled_tokens", 0.0) for r in s.run.read_metrics() if r["step"] <= state.step
    )
    step = state.step
    with progress(console) as prog:
        bar = prog.add_task("RL", total=cfg.train.steps, info="", completed=state.step)
        for step in range(state.step + 1, cfg.train.steps + 1):
            try:
                metrics = train_step(s, step)
            except ArlkitError as e:  # e.g. the sampler met the non-finite logits of diverged weights
                raise ArlkitError(f"training stopped at step {step}: {e}") from None
            if s.rollouts is not None:  # a version boundary, update skipped or not: the producer waits on it
                metrics |= s.rollouts.publish(s.policy.model, step)
            metrics |= observe_step(state, metrics)
            state.step = step
            s.run.log(step, metrics)
            weights = (s.policy.trained, s.policy.value_head, s.policy.critic)
            check_finite_weights(weights, step, cfg.algo.lr, s.run.path / "checkpoints", s.dist)
            sampled += metrics.get("rollout/sampled_tokens", 0.0)
            nan = float("nan")  # a step whose every episode crashed has no rollout metrics
            info = (
                f"reward {metrics.get('rollout/reward', nan):+.3f} · EM {metrics.get('rollout/em', nan):.3f}"
            )
            prog.update(bar, completed=step, info=info)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                run_eval(s, step, f"step{step}")
            save_state(s, state)  # every train.save_every steps; raises after train.max_bad_steps bad ones
            if cfg.train.sampled_token_budget and sampled >= cfg.train.sampled_token_budget:
                break  # the generation budget is spent (equal budgets across methods)
    if s.rollouts is not None:
        s.rollouts.close()
    final = run_eval(s, step, "final") if cfg.task.n_eval else {}
    save_checkpoint(s, "final")
    if s.dist.is_main:
        plot_curves(s.run.read_metrics(), s.run.path / "curves.png")
    s.run.close()
    summary = {
        "base": base,
        "final": final,
        "n_eval": len(s.eval_rows),
        "steps": step,
        "sampled_tokens": sampled,
        "seconds": time.perf_counter() - t_start,
        "run_dir": str(s.run.path),
        "rank": s.dist.rank,
    }
    s.run.write_json("summary.json", summary)
    if hasattr(s.sampler, "close"):  # the vLLM server arlkit started
        s.sampler.close()
    if s.agents is not None:
        s.agents.close()
    shutdown(s.dist)
    return summary
