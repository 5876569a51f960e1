"""rollout.backend vllm: episodes generate on a vLLM server, token ids in and token ids out.

- `VLLMGenerator` is a stateless Generator (rollout/generator.py): every turn of every live episode is one
  `/v1/completions` request whose prompt is the episode's ids so far; all of a turn's requests are in flight
  at once (vLLM batches them continuously) and vLLM's prefix cache serves the history the previous turn
  already computed. The ids, their log-probabilities (vLLM's `processed_logprobs`: after temperature, the
  distribution arlkit's trainer recomputes) and an entropy over vLLM's top-k log-probabilities come back; the
  turn ends where arlkit's own rule ends it (a stop id, or the id whose text closes a tool call).
- `VLLMSampler` keeps the server's weights equal to the policy's: after every optimiser step it writes the
  merged weights (LoRA deltas added) as safetensors, asks the server to load them (`vllm_worker.WeightSync`),
  resets the prefix cache (whose keys and values came from the old weights), and every `check_every` syncs
  compares the server's log-probabilities of a fixed sequence with the trainer's. A sync that left stale
  weights stops the run instead of training on them.

Why merged weights and not vLLM LoRA adapters: one code path for full and LoRA training, nothing to configure
in the server (adapters need --enable-lora and a rank limit), and decode runs at the plain model's speed;
docs/vllm.md gives the sync times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

from arlkit.errors import ArlkitError
from arlkit.models.precision import _plain, merged_state_dict
from arlkit.rollout.generator import Generation, SamplingParams, turn_end
from arlkit.rollout.version_gate import VersionGate
from arlkit.rollout.vllm_server import VLLMServer, find_python, remove_dir

SERVED_NAME = "policy"


class VLLMGenerator:
    """Token-in/token-out generation on a vLLM server (see the module docstring)."""

    def __init__(
        self,
        server: VLLMServer,
        *,
        seed: int = 0,
        max_concurrency: int = 256,
        request_timeout: float = 600.0,
        entropy_top_k: int = 20,
        retries: int = 1,
    ):
        self.server = server
        self.rng = torch.Generator().manual_seed(seed)  # per-request seeds: a resumed run draws the same ones
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self.entropy_top_k = entropy_top_k
        self.retries = retries
        self.stats = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        self.stats_lock = threading.Lock()  # producers' generators share `stats` (asynchronous rollouts)
        # partial rollouts: each call is one version of the weights (a read of the server's gate), and its
        # Generations say which; None: the caller keeps the weights fixed (the synchronous loop, a whole batch)
        self.gate: VersionGate | None = None

    def sibling(self, seed: int) -> VLLMGenerator:
        """Another generator on the same server (its own seeds), counting into the same stats."""
        gen = VLLMGenerator(
            self.server,
            seed=seed,
            max_concurrency=self.max_concurrency,
            request_timeout=self.request_timeout,
            entropy_top_k=self.entropy_top_k,
            retries=self.retries,
        )
        gen.stats, gen.stats_lock, gen.gate = self.stats, self.stats_lock, self.gate
        return gen

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        with self.gate.read() if self.gate is not None else nullcontext() as version:
            gens = self._generate(prompts, params)
        if version is None:
            return gens
        return [dataclasses.replace(g, version=version) for g in gens]

    def _generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=self.rng).tolist()
        bodies = [self._body(list(p), params, s) for p, s in zip(prompts, seeds, strict=True)]
        for attempt in range(self.retries + 1):
            try:
                choices = asyncio.run(self._post_all(bodies))
                break
            except (httpx.HTTPError, OSError) as e:
                if attempt == self.retries:
                    raise ArlkitError(
                        f"vLLM requests failed {attempt + 1} times ({type(e).__name__}: {e}); "
                        f"server log {self.server.log_path}:\n{self.server.log_tail()}"
                    ) from e
                # a server that died or hung is restarted (arlkit's own; the user's must be healthy), then the
                # same requests go again with the same seeds: nothing of the step is lost
                if self.server.owned or not self.server.healthy():
                    self.server.restart()
        return [self._generation(c, params) for c in choices]

    def _body(self, prompt: list[int], params: SamplingParams, seed: int) -> dict:
        body = {
            "model": SERVED_NAME,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed,
            "logprobs": self.entropy_top_k,  # the sampled token's logprob always comes back too
            "return_token_ids": True,
            "skip_special_tokens": False,
            "ignore_eos": True,  # only arlkit's stop ids end a turn, as in its own engine
            "stop_token_ids": list(params.stop_token_ids),
        }
        if params.spans is not None:  # vLLM stops on the text; arlkit's rule then cuts at the closing id
            body |= {"stop": [params.spans.tags.call_close], "include_stop_str_in_output": True}
        return body

    async def _post_all(self, bodies: list[dict]) -> list[dict]:
        limits = httpx.Limits(max_connections=self.max_concurrency)
        timeout = httpx.Timeout(self.request_timeout, connect=30)
        async with httpx.AsyncClient(base_url=self.server.url, limits=limits, timeout=timeout) as client:
            return await asyncio.gather(*(self._post(client, b) for b in bodies))

    async def _post(self, client: httpx.AsyncClient, body: dict) -> dict:
        r = await client.post("/v1/completions", json=body)
        if r.status_code >= 500:  # the engine died or failed: retried after a restart
            r.raise_for_status()
        if r.status_code != 200:
            raise ArlkitError(f"vLLM refused a generation request ({r.status_code}): {r.text[:500]}")
        data = r.json()
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        with self.stats_lock:
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
            self.stats["cached_tokens"] += details.get("cached_tokens") or 0
            self.stats["generated_tokens"] += usage.get("completion_tokens", 0)
        return data["choices"][0]

    def _generation(self, choice: dict, params: SamplingParams) -> Generation:
        ids = list(choice["token_ids"])
        lp = choice["logprobs"]
        logprobs = [float(x) for x in lp["token_logprobs"]]
        if self.entropy_top_k:
            entropies = [_top_k_entropy(t) for t in lp.get("top_logprobs") or [None] * len(ids)]
        else:  # vLLM still returns the sampled token's entry: one term is no entropy
            entropies = [math.nan] * len(ids)
        end = turn_end(ids, params)
        if end is not None:
            return Generation(ids[:end], logprobs[:end], entropies[:end], "stop")
        return Generation(
            ids, logprobs, entropies, "length" if choice["finish_reason"] == "length" else "stop"
        )

    def cache_hit_rate(self) -> float:
        return self.stats["cached_tokens"] / max(self.stats["prompt_tokens"], 1)


def _top_k_entropy(top: dict[str, float] | None) -> float:
    """−Σ p log p over the k most likely tokens: a lower bound of the entropy (exact as k → |V|); the
    sampling distribution's, as the logprobs are processed (temperature applied)."""
    if not top:
        return math.nan
    return -sum(math.exp(v) * v for v in top.values() if v > -math.inf)


class VLLMSampler:
    """The vLLM server of a run and the weight sync that keeps it on the policy's weights.

    `refresh(policy_model)` is called where arlkit refreshes any rollout copy: before evaluating, after every
    update and after a resume (train/loop.py, train/checkpoint.py)."""

    def __init__(
        self,
        server: VLLMServer,
        generator: VLLMGenerator,
        sync_dir: Path,
        *,
        dtype: torch.dtype,
        check_every: int,
        tolerance: float,
        probe_ids: list[int],
    ):
        self.server, self.generator, self.sync_dir = server, generator, sync_dir
        self.dtype, self.check_every, self.tolerance = dtype, check_every, tolerance
        self.probe_ids = probe_ids
        self.syncs = 0
        self._seen: dict[str, int] = {}
        self.last_sync_s = math.nan
        self.last_write_s = math.nan
        self.last_diff = math.nan
        self.last_wait_s = 0.0
        # asynchronous rollouts: the version the server holds, and the lock a sync takes against generation
        self.gate = VersionGate()

    @torch.no_grad()
    def refresh(self, policy_model: torch.nn.Module, version: int | None = None) -> None:
        """Load the policy's weights into the server (`version`: their version, for asynchronous rollouts);
        first waits for the generation that holds the gate to end."""
        t0 = time.perf_counter()
        write_weights(policy_model, self.sync_dir, self.dtype)
        t1 = time.perf_counter()
        with self.gate.write(version):
            t2 = time.perf_counter()
            r = self._post("/collective_rpc", {"method": "arlkit_load_weights", "args": [str(self.sync_dir)]})
            if r.get("results") is None:
                raise ArlkitError(f"the vLLM server did not load the weights: {r}")
            self._post("/reset_prefix_cache", None)  # cached keys/values were computed by the old weights
            self.syncs += 1
            if self.check_every and self.syncs % self.check_every == 0:
                self.check(policy_model)
        self.last_sync_s = time.perf_counter() - t2 + (t1 - t0)
        self.last_write_s, self.last_wait_s = t1 - t0, t2 - t1

    @torch.no_grad()
    def check(self, policy_model: torch.nn.Module) -> float:
        """Mean |log π_vLLM − log π_trainer| over the probe sequence; records it and returns it.

        Raises:
            ArlkitError: above the tolerance: the server is not serving the trained weights.
        """
        served = self.prompt_logprobs(self.probe_ids)
        model = policy_model
        was_training = model.training
        model.eval()
        try:
            ids = torch.tensor([self.probe_ids], device=next(model.parameters()).device)
            logits = model(input_ids=ids).logits[0, :-1].float()
        finally:
            model.train(was_training)
        ours = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu()
        diff = float((torch.tensor(served) - ours).abs().mean())
        self.last_diff = diff
        if not diff <= self.tolerance:
            raise ArlkitError(
                f"after weight sync {self.syncs} the vLLM server's log-probabilities differ from the trainer's "
                f"by {diff:.3g} per token (tolerance {self.tolerance:g}): it is not serving the trained "
                f"weights. Check the server's worker extension ({self.server.log_path}) and "
                "rollout.vllm.check_tolerance"
            )
        return diff

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """vLLM's log π(c_t | c_<t) for t ≥ 1 (raw logits: no temperature) of a fixed sequence."""
        body = {"model": SERVED_NAME, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
        r = self._post("/v1/completions", body)
        rows = r["choices"][0]["prompt_logprobs"][1:]
        return [float(row[str(t)]["logprob"]) for row, t in zip(rows, ids[1:], strict=True)]

    def metrics(self) -> dict[str, float]:
        """The last sync's figures and the generation since the previous call (one step's)."""
        with self.generator.stats_lock:
            now = dict(self.generator.stats)
        seen = {k: now[k] - self._seen.get(k, 0) for k in now}
        self._seen = now
        return {
            "rollout/vllm_sync_s": self.last_sync_s,
            "rollout/vllm_sync_write_s": self.last_write_s,
            "rollout/vllm_sync_logprob_diff": self.last_diff,
            "rollout/vllm_sync_wait_s": self.last_wait_s,
            "rollout/vllm_requests": float(seen["requests"]),
            "rollout/vllm_prefix_cache_hit_rate": seen["cached_tokens"] / max(seen["prompt_tokens"], 1),
        }

    def _post(self, path: str, body: dict | None) -> dict:
        r = httpx.post(f"{self.server.url}{path}", json=body, timeout=self.generator.request_timeout)
        if r.status_code != 200:
            raise ArlkitError(
                f"vLLM {path} failed ({r.status_code}): {r.text[:300]}; the server must run with "
                "VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls arlkit.rollout.vllm_worker.WeightSync"
            )
        return r.json() if r.content else {}

    def close(self) -> None:
        self.server.stop()
        remove_dir(self.sync_dir)


@torch.no_grad()
def write_weights(policy_model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """The policy's merged weights as `folder/model.safetensors`, under the checkpoint names vLLM loads; a
    tied output head is left out (vLLM ties it to the embedding it loads). Written then renamed, so the
    server never reads a half-written file."""
    plain = _plain(policy_model)
    tied = bool(getattr(plain.config, "tie_word_embeddings", False))
    tensors = {
        k: v.detach().to("cpu", dtype).contiguous()
        for k, v in merged_state_dict(policy_model).items()
        if not (tied and k == "lm_head.weight")
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "model.safetensors")


def export_model(policy_model: torch.nn.Module, tokenizer, folder: Path, dtype: torch.dtype) -> None:
    """A folder vLLM starts from: the plain model's config (vocabulary as resized), the tokenizer and the
    merged weights."""
    plain = _plain(policy_model)
    folder.mkdir(parents=True, exist_ok=True)
    config = plain.config.to_dict()
    config["dtype"] = str(dtype).removeprefix("torch.")
    type(plain.config).from_dict(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_weights(policy_model, folder, dtype)


def sync_folder(configured: str | None) -> Path:
    base = configured or ("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
    Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="arlkit-vllm-", dir=base))


def server_args(
    cfg_vllm, *, dtype: str, max_model_len: int, max_num_seqs: int, seed: int, on_gpu: bool
) -> list[str]:
    """The server's command-line flags for a run (rollout.vllm.extra_args last, so a user can override)."""
    args = [
        "--dtype", dtype,
        "--max-model-len", str(max_model_len),
        "--max-num-seqs", str(max_num_seqs),
        "--enable-prefix-caching",
        "--block-size", str(cfg_vllm.block_size),
        "--logprobs-mode", "processed_logprobs",  # after temperature: the distribution the trainer recomputes
        "--max-logprobs", str(max(cfg_vllm.entropy_top_k, 1)),
        "--enable-prompt-tokens-details",  # cached prompt tokens per request: the prefix-cache hit rate
        "--seed", str(seed),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if on_gpu:
        args += ["--gpu-memory-utilization", str(cfg_vllm.gpu_memory_utilization)]
    else:
        # vLLM 0.32's CPU worker crashes ("CPU Generator does not use offset") when a prefill split across
        # steps discards the token drawn from a per-request seeded generator; arlkit seeds every request (a
        # resumed run draws the same tokens), so prefills are not split on CPU
        args.append("--no-enable-chunked-prefill")
    if cfg_vllm.enforce_eager:
        args.append("--enforce-eager")
    return args + list(cfg_vllm.extra_args)


def build_vllm(cfg, policy, run_path: Path, seed: int) -> VLLMSampler:
    """Start (or attach to) the run's vLLM server on the policy's current weights.

    Raises:
        ArlkitError: a routed policy (DART routes adapters per token inside arlkit's engine), vllm missing or
            too old, or the server failing to start.
    """
    r = cfg.rollout
    v = r.vllm
    if policy.routing is not None:
        raise ArlkitError(
            "a routed policy (model.routing, DART) switches adapters per token inside arlkit's engine; "
            "use rollout.backend=engine"
        )
    on_gpu = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
    dtype = torch.bfloat16 if r.dtype == "bfloat16" else next(policy.model.parameters()).dtype
    sync_dir = sync_folder(v.sync_dir)
    try:
        if v.url is None:
            server = start_server(
                policy.model,
                policy.tokenizer,
                v,
                sync_dir,
                dtype=dtype,
                max_length=r.max_length,
                max_num_seqs=r.max_batch,
                seed=seed,
                on_gpu=on_gpu,
                log_path=run_path / "vllm_server.log",
            )
        else:
            server = VLLMServer(url=v.url, log_path=None)
            server.start()
    except BaseException:
        remove_dir(sync_dir)
        raise
    gen = VLLMGenerator(
        server,
        seed=seed,
        max_concurrency=r.max_batch,
        request_timeout=v.request_timeout,
        entropy_top_k=v.entropy_top_k,
        retries=v.retries,
    )
    tol = v.check_tolerance or (5e-2 if dtype == torch.bfloat16 else 1e-3)
    probe = probe_ids(policy.tokenizer)
    sampler = VLLMSampler(
        server, gen, sync_dir, dtype=dtype, check_every=v.check_every, tolerance=tol, probe_ids=probe
    )
    if v.url is not None:
        sampler.refresh(policy.model)  # the user's server started from its own folder: load the policy
    elif v.check_every:
        sampler.check(policy.model)
    return sampler


def start_server(
    model: torch.nn.Module,
    tokenizer,
    v,
    folder: Path,
    *,
    dtype: torch.dtype,
    max_length: int,
    max_num_seqs: int,
    seed: int,
    on_gpu: bool,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> VLLMServer:
    """Export `model` (LoRA deltas merged) to `folder` and start arlkit's own vLLM server on it, with the flags
    and environment rollout.vllm `v` gives; returns it healthy.

    Raises:
        ArlkitError: vllm missing or too old, or the server failing to start.
    """
    python = find_python(v.python)
    export_model(model, tokenizer, folder, dtype)
    args = server_args(
        v,
        dtype=str(dtype).removeprefix("torch."),
        max_model_len=max_model_len(model, max_length),
        max_num_seqs=max_num_seqs,
        seed=seed,
        on_gpu=on_gpu,
    )
    env = {"VLLM_CPU_KVCACHE_SPACE": str(v.kv_cache_gb), **(extra_env or {})}
    server = VLLMServer(
        python=python,
        model_dir=str(folder),
        args=args,
        env=env,
        log_path=log_path or folder / "server.log",
        start_timeout=v.start_timeout,
    )
    server.start()
    return server


def max_model_len(model: torch.nn.Module, max_length: int) -> int:
    """An episode never exceeds rollout.max_length (Episode.turn_budget); vLLM refuses a length past the
    model's positions."""
    positions = getattr(_plain(model).config, "max_position_embeddings", None)
    return min(max_length, positions) if positions else max_length


def probe_ids(tokenizer) -> list[int]:
    """A fixed sequence of ordinary text for the parity probe."""
    text = "The capital of France is Paris. Search for the birthplace of the author, then answer."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:48] if len(ids) >= 2 else [0, 1, 2, 3]
