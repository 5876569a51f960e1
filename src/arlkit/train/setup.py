"""Everything a run needs, built once from the config: task, policy (and critic), optimisers, run folder."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from arlkit.config import Config
from arlkit.envs.message_env import episode_env
from arlkit.envs.parsing import ActionFormat, HermesFormat
from arlkit.errors import ArlkitError
from arlkit.gateway.agents import AgentRollout, build_agent_rollout
from arlkit.models.loading import DTYPES, Policy, load_policy, resolve_model_source
from arlkit.models.precision import SamplerCopy
from arlkit.models.value import ValueHead, load_critic
from arlkit.rollout.backends import make_runner
from arlkit.rollout.engine import EpisodeRunner, TurnSyncRunner
from arlkit.rollout.vllm_backend import VLLMSampler, build_vllm
from arlkit.tasks import Task, ToyTask
from arlkit.tasks import build_task as task_from_config
from arlkit.tasks.remote import with_ray_tools
from arlkit.train.async_rollouts import AsyncRollouts
from arlkit.train.async_rollouts import check_supported as check_async_supported
from arlkit.train.distributed import (
    Dist,
    GradSync,
    QuietRunDir,
    broadcast_parameters,
    check_divisible,
    init_distributed,
    main_first,
    rollout_seed,
)
from arlkit.train.fsdp import check_supported as check_fsdp_supported
from arlkit.train.fsdp import shard_for_training
from arlkit.train.loggers import build_loggers
from arlkit.train.memory import set_mmap_threshold
from arlkit.train.run_dir import RunDir, RunMode
from arlkit.train.update import Optimisers


@dataclass
class Setup:
    """Everything the loop needs. `cursor` is the index of the next training prompt (the data position)."""

    cfg: Config
    policy: Policy
    task: Task
    generator: EpisodeRunner
    opts: Optimisers | None  # None when set up for evaluation only (`setup(..., for_training=False)`)
    run: RunDir
    train_rows: list[dict]
    eval_rows: list[dict]
    rng: torch.Generator
    cursor: int = 0  # this rank's own count of prompts taken (train/distributed.py maps it to the stream)
    dist: Dist = field(default_factory=Dist)
    sync: GradSync | None = None  # the gradient sum across ranks; None in one process
    # what `generator` runs on, refreshed after every update: rollout.dtype bfloat16's copy, or the vLLM server
    sampler: SamplerCopy | VLLMSampler | None = None
    agents: AgentRollout | None = None  # rollout.agent: the user's agent behind the gateway (arlkit/gateway/)
    rollouts: AsyncRollouts | None = None  # rollout.max_staleness > 0: the producer (train/async_rollouts.py)


def build_task(cfg: Config) -> Task:
    """The task the config's `task` section names (see `arlkit.tasks`)."""
    return task_from_config(cfg.task)


# names `resolve_model_path` maps to a model before any folder of the same name (smollm2: models/gguf.py)
MODEL_ALIASES = ("tiny", "smollm2")


def absolute_model_path(path: str) -> str:
    """`path` made absolute (relative to the working directory, `~` and symlinks resolved) when it names
    something on disk; else unchanged: a Hugging Face id, an alias, or a typo that loading reports as typed."""
    local = Path(path).expanduser()
    return str(local.resolve()) if path not in MODEL_ALIASES and local.exists() else path


def with_absolute_paths(cfg: Config) -> Config:
    """`cfg` with the models it loads (model.path, model.routing.action_model_path, critic.path) named by
    absolute paths. The run folder's config.yaml, its checkpoints' saved config and the adapters it saves then
    name models that reload from any working directory: a resume, an eval or the next stage of a chain may
    run elsewhere, where a relative path names another folder or none."""
    data = cfg.model_dump()
    fields = [
        (data["model"], "path"),
        (data["critic"], "path"),
        (data["model"]["routing"] or {}, "action_model_path"),
    ]
    for section, name in fields:
        if section.get(name):
            section[name] = absolute_model_path(section[name])
    return Config.model_validate(data)


def resolve_model_path(cfg: Config, task: Task, console: Console) -> Path | str:
    """`tiny` means the embedded base for this toy task's world, built (minutes) and cached on first use; a
    GGUF source (a .gguf file, model.gguf_file, `smollm2`) its Hugging Face folder, converted once and cached."""
    if cfg.model.path != "tiny" or cfg.model.gguf_file is not None:
        return resolve_model_source(cfg.model.path, cfg.model.gguf_file)
    if not isinstance(task, ToyTask):
        raise ArlkitError(
            f"model.path 'tiny' needs a toy task (toywiki, toysql, math_python); task {cfg.task.name!r} needs a "
            "real model: set model.path to a Hugging Face id, a local folder, a .gguf file or 'smollm2'"
        )
    from arlkit.models.tiny import TinyRecipe, cache_root, ensure_base

    recipe = TinyRecipe.for_task(task)
    cached = cache_root() / f"tiny-{recipe.key()}"
    if (cached / "arlkit_recipe.json").exists():
        return cached
    with progress(console) as prog:
        bar = prog.add_task("building the tiny base (SFT)", total=recipe.sft.steps, info="")
        return ensure_base(
            recipe, on_step=lambda s, loss: prog.update(bar, completed=s + 1, info=f"loss {loss:.3f}")
        )


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base lr at optimiser step `step`: linear warm-up, then constant/cosine/linear decay
    to `min_ratio` at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * shape

    return factor


def _lora_kwargs(cfg: Config) -> dict | None:
    lc = cfg.model.lora
    if lc is None:
        return None
    return {
        "r": lc.rank,
        "lora_alpha": lc.alpha,
        "lora_dropout": lc.dropout,
        "target_modules": lc.target_modules,
    }


def build_policy(cfg: Config, path: Path | str, device: torch.device, for_training: bool = True) -> Policy:
    """The policy, its KL reference when needed, and the critic the config asks for. For evaluation only
    (`for_training=False`), nothing that only an update uses: no fresh LoRA adapters (initialised to change no
    output), no KL reference, no critic or value head."""
    lora = cfg.model.lora if for_training else None
    # a bf16 base under float32 adapters: peft keeps new adapters float32 on a bf16 model (autocast_adapter_dtype)
    bf16_base = lora is not None and lora.base_dtype == "bfloat16"
    policy = load_policy(
        path,
        "bfloat16" if bf16_base else cfg.model.dtype,
        device,
        _lora_kwargs(cfg) if for_training else None,
        for_training and cfg.algo.kl_coef > 0,
        cfg.model.gradient_checkpointing,
        cfg.model.routing.model_dump() if cfg.model.routing else None,
        add_delimiters=cfg.model.add_delimiter_tokens,
    )
    if not for_training:
        return policy
    if cfg.critic.kind == "value_head":
        policy.value_head = ValueHead(policy.model.config.hidden_size).to(device)
    elif cfg.critic.kind == "separate":
        policy.critic = load_critic(cfg.critic.path or path, device, DTYPES[cfg.model.dtype])
    return policy


def build_sampler(cfg: Config, policy: Policy) -> SamplerCopy | None:
    """The bf16 copy rollouts run on when `rollout.dtype` asks for one (models/precision.py).

    Raises:
        ArlkitError: a role-routed policy, whose adapters route per token inside the engine.
    """
    if cfg.rollout.dtype == "policy":
        return None
    if policy.routing is not None:
        raise ArlkitError(
            "rollout.dtype bfloat16 samples from a plain copy; a routed policy (model.routing) needs 'policy'"
        )
    return SamplerCopy(policy.model, torch.bfloat16)


def build_optimisers(cfg: Config, policy: Policy) -> Optimisers:
    a = cfg.algo
    total = cfg.train.steps * a.epochs * a.mini_batches  # optimiser steps of the whole run
    actor = torch.optim.AdamW(policy.trainable_parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        actor, lr_lambda(a.warmup_steps, total, a.lr_schedule, a.min_lr_ratio)
    )
    if policy.critic is None:
        return Optimisers(actor, sched)
    critic = torch.optim.AdamW(policy.critic.parameters(), lr=cfg.critic.lr, weight_decay=a.weight_decay)
    critic_sched = torch.optim.lr_scheduler.LambdaLR(
        critic, lr_lambda(a.warmup_steps, total, a.lr_schedule, a.min_lr_ratio)
    )
    return Optimisers(actor, sched, critic, critic_sched)


def setup(
    cfg: Config, console: Console, for_training: bool = True, run_mode: RunMode | None = "append"
) -> Setup:
    """The run's Setup; `for_training=False` (arlkit eval) builds no optimiser (`opts` is None), no training
    prompts and none of what only an update uses (see `build_policy`). Local model paths are made absolute
    first. `run_mode`: what to do with a run the folder holds already (train/run_dir.py), checked before the
    model loads; None writes no run folder (an evaluation that was not asked to keep one)."""
    cfg = with_absolute_paths(cfg)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.mmap_threshold_kb:
        set_mmap_threshold(cfg.train.mmap_threshold_kb)
    dist = init_distributed(cfg.train.device, cfg.train.strategy)
    if dist.fsdp:
        check_fsdp_supported(cfg)
    check_divisible(cfg.rollout.prompts_per_step, dist)
    if (cfg.rollout.max_staleness or cfg.rollout.partial_rollouts) and for_training:  # before a model loads
        check_async_supported(cfg, dist.world_size)
    writes = dist.is_main and run_mode is not None
    run = RunDir(cfg.train.run_dir, mode=run_mode) if writes else QuietRunDir(cfg.train.run_dir)
    run.loggers = tuple(build_loggers(cfg, run.path)) if writes else ()
    run.write_config(cfg.model_dump())
    with main_first(dist):  # one rank fills shared caches (the tiny base, indexes), the others then read them
        task = build_task(cfg)
        path = resolve_model_path(cfg, task, console)
    task = with_ray_tools(task, cfg.ray)
    policy = build_policy(cfg, path, dist.device, for_training)
    broadcast_parameters([policy.model, policy.value_head, policy.critic], dist)
    if dist.fsdp:
        policy.train_model = shard_for_training(policy.model, dist)
        if dist.is_main:
            console.print(
                f"FSDP: trained weights, gradients and optimiser state sharded over {dist.world_size} ranks"
            )
    # enough distinct prompts for every step even when dynamic sampling draws extra rounds
    rounds = cfg.algo.max_sampling_rounds if cfg.algo.dynamic_sampling else 1
    n_train = max(cfg.train.steps, 1) * cfg.rollout.prompts_per_step * rounds
    # an evaluation needs no training prompts, and an eval-only task (task.train_file unset) has none
    train_rows = task.rows(cfg.task.train_split, n_train, seed=cfg.train.seed + 1000) if for_training else []
    if cfg.rollout.backend == "vllm":
        if dist.enabled:
            raise ArlkitError("rollout.backend vllm runs with one trainer process; launch without torchrun")
        # the server's log goes to the run folder; an evaluation that keeps none logs to a temporary folder
        logs = run.path if writes else Path(tempfile.mkdtemp(prefix="arlkit-vllm-"))
        sampler = build_vllm(cfg, policy, logs, rollout_seed(cfg.train.seed, dist))
        generator: EpisodeRunner = TurnSyncRunner(sampler.generator)
    else:
        sampler = build_sampler(cfg, policy)
        generator = make_runner(
            cfg.rollout.backend,
            policy.model if sampler is None else sampler.model,
            policy.tokenizer.pad_token_id,
            max_batch=cfg.rollout.max_batch,
            seed=rollout_seed(cfg.train.seed, dist),
            prefill_tokens=cfg.rollout.prefill_tokens,
            cuda_graphs=cfg.rollout.cuda_graphs,
            routing=policy.routing,
        )
    return Setup(
        cfg=cfg,
        policy=policy,
        task=task,
        sampler=sampler,
        generator=generator,
        agents=build_agents(cfg, policy, task, generator, dist) if cfg.rollout.agent else None,
        opts=build_optimisers(cfg, policy) if for_training else None,
        run=run,
        train_rows=train_rows,
        eval_rows=task.rows("heldout", cfg.task.n_eval, seed=cfg.task.eval_seed),
        rng=torch.Generator().manual_seed(cfg.train.seed),
        dist=dist,
        sync=GradSync(dist) if dist.enabled else None,
    )


def build_agents(cfg: Config, policy: Policy, task: Task, runner: EpisodeRunner, dist: Dist) -> AgentRollout:
    """rollout.agent's gateway in front of the run's runner, parsing tool calls in the task env's format.

    Raises:
        ArlkitError: a setting the agent path does not support (it records what the agent's requests
            generated; it cannot branch them, roll out a greedy baseline, route adapters or shard).
    """
    unsupported = {
        "train with one process (launch without torchrun)": dist.enabled,
        "branching.mode none (branches resume arlkit's own episodes)": cfg.branching.mode != "none",
        "an advantage without a greedy baseline (remax rolls out the built-in env)": cfg.algo.advantage
        == "remax",
        "a policy without model.routing (DART routes on arlkit's engine only)": policy.routing is not None,
    }
    for need, bad in unsupported.items():
        if bad:
            raise ArlkitError(f"rollout.agent needs {need}")
    env = episode_env(task.make_env())
    fmt = env.fmt if isinstance(env.fmt, ActionFormat) else HermesFormat()
    r = cfg.rollout
    return build_agent_rollout(
        r.agent,
        runner,
        policy.tokenizer,
        fmt,
        max_length=r.max_length,
        max_new_tokens=r.max_new_tokens,
        top_p=r.top_p,
        api_key=r.gateway.api_key,
        port=r.gateway.port,
        gather_s=r.gateway.gather_s,
        max_batch=r.max_batch,
        timeout_s=r.agent_timeout_s,
        concurrency=r.agent_concurrency,
        concurrent_batches=8 if r.backend == "vllm" else 1,
    )


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
