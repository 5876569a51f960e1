"""LoRA weight sync to vLLM: merged weights (what rollout.backend vllm does) against vLLM LoRA adapters.

    .venv/bin/python benchmarks/vllm_sync.py --model smollm2 --dtype bfloat16
    .venv/bin/python benchmarks/vllm_sync.py --model tiny --dtype float32 --rank 8

The policy is the model with LoRA adapters (rank --rank on every linear layer, B drawn at random so the
adapters change the outputs). Each variant starts its own server (`make install-vllm`), then times 3 syncs
and one rollout-shaped generation (--prompts prompts × --tokens new tokens, sampled):
- merged:  the merged weights W + B A · scale written as safetensors, loaded by arlkit's worker extension,
           prefix cache reset (rollout/vllm_backend.py);
- adapter: the adapter saved with peft, loaded with vLLM's /v1/load_lora_adapter under a new name per sync
           (the server started with --enable-lora), prefix cache reset; requests name the adapter.
Both check the served prompt logprobs against this process's forward of the LoRA model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from _common import load_model
from peft import LoraConfig, get_peft_model

from arlkit.config import VLLMConfig
from arlkit.models.loading import DTYPES
from arlkit.rollout.generator import SamplingParams
from arlkit.rollout.vllm_backend import VLLMGenerator, VLLMSampler, probe_ids, start_server, sync_folder


def lora_policy(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    policy = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return policy


def start(policy, tok, args, extra: list[str], env: dict[str, str]) -> tuple[VLLMSampler, float]:
    folder = sync_folder(None)
    # merged: the server starts on the policy as it is; adapter: on the base, the adapter comes by request
    source = policy if not extra else policy.get_base_model()
    t0 = time.perf_counter()
    server = start_server(
        source,
        tok,
        VLLMConfig(extra_args=extra),
        folder,
        dtype=DTYPES[args.dtype],
        max_length=1024,
        max_num_seqs=args.prompts,
        seed=0,
        on_gpu=args.device == "cuda",
        extra_env=env,
    )
    started = time.perf_counter() - t0
    gen = VLLMGenerator(server, seed=0, max_concurrency=args.prompts)
    sampler = VLLMSampler(
        server, gen, folder, dtype=DTYPES[args.dtype], check_every=0, tolerance=1.0, probe_ids=probe_ids(tok)
    )
    return sampler, started


@torch.no_grad()
def forward_logprobs(policy, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], device=next(policy.parameters()).device)
    logits = policy(input_ids=x).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, x[0, 1:, None]).squeeze(-1).cpu()


def served_logprobs(sampler: VLLMSampler, ids: list[int], model_name: str) -> torch.Tensor:
    body = {"model": model_name, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
    r = httpx.post(f"{sampler.server.url}/v1/completions", json=body, timeout=600).json()
    rows = r["choices"][0]["prompt_logprobs"][1:]
    return torch.tensor([row[str(t)]["logprob"] for row, t in zip(rows, ids[1:], strict=True)])


def timed_generation(sampler: VLLMSampler, prompts, args, model_name: str) -> float:
    """Generated tokens/s of one batch of sampled requests naming `model_name`."""
    gen = sampler.generator
    body = gen._body  # the backend's own request body, with the model name swapped

    def named(prompt, params, seed):
        return body(prompt, params, seed) | {"model": model_name}

    gen._body = named
    try:
        params = SamplingParams(max_new_tokens=args.tokens, temperature=1.0)
        t0 = time.perf_counter()
        outs = gen.generate(prompts, params)
        return sum(len(g.ids) for g in outs) / (time.perf_counter() - t0)
    finally:
        gen._body = body


def run_merged(policy, tok, prompts, args) -> dict:
    sampler, started = start(policy, tok, args, [], {})
    try:
        syncs = []
        for _ in range(3):
            sampler.refresh(policy)
            syncs.append(sampler.last_sync_s)
        probe = sampler.probe_ids
        diff = float(
            (served_logprobs(sampler, probe, "policy") - forward_logprobs(policy, probe)).abs().mean()
        )
        rate = timed_generation(sampler, prompts, args, "policy")
    finally:
        sampler.close()
    return {"start_s": started, "sync_s": statistics.median(syncs), "parity": diff, "tok_s": rate}


def run_adapter(policy, tok, prompts, args) -> dict:
    extra = ["--enable-lora", "--max-lora-rank", str(args.rank), "--max-loras", "1"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    sampler, started = start(policy, tok, args, extra, env)
    url = sampler.server.url
    try:
        syncs, name, folder = [], None, Path(tempfile.mkdtemp(prefix="arlkit-lora-", dir="/dev/shm"))
        for i in range(3):
            t0 = time.perf_counter()
            path = folder / f"v{i}"
            policy.save_pretrained(path)
            if name is not None:  # one adapter resident, as --max-loras 1
                httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=600)
            name = f"policy-v{i}"
            r = httpx.post(
                f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=600
            )
            r.raise_for_status()
            httpx.post(f"{url}/reset_prefix_cache", timeout=600).raise_for_status()
            syncs.append(time.perf_counter() - t0)
        probe = sampler.probe_ids
        diff = float((served_logprobs(sampler, probe, name) - forward_logprobs(policy, probe)).abs().mean())
        rate = timed_generation(sampler, prompts, args, name)
    finally:
        sampler.close()
    return {"start_s": started, "sync_s": statistics.median(syncs), "parity": diff, "tok_s": rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="tiny | smollm2 | a local model folder")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", help="where the trainer's copy lives (cuda: the server too)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    model, tok, task = load_model(args.model, args.device, "float32")
    policy = lora_policy(model, args.rank)
    rows = task.rows("rl", args.prompts, seed=3)
    prompts = [tok(r["question"], add_special_tokens=False)["input_ids"] for r in rows]
    res = {
        "merged": run_merged(policy, tok, prompts, args),
        "adapter": run_adapter(policy, tok, prompts, args),
    }
    n = sum(p.numel() for p in policy.parameters())
    print(f"model {args.model} ({n / 1e6:.1f}M parameters with LoRA rank {args.rank}) · server {args.dtype}")
    print(f"{'variant':<9}{'start s':>9}{'sync s':>9}{'parity |Δ|':>12}{'gen tok/s':>11}")
    for k, r in res.items():
        print(f"{k:<9}{r['start_s']:>9.1f}{r['sync_s']:>9.3f}{r['parity']:>12.2g}{r['tok_s']:>11.0f}")


if __name__ == "__main__":
    main()
