"""Tokens/s and peak memory of one RL update (forward + backward + optimiser step), variant by variant.

    .venv/bin/python benchmarks/train_step.py                  # the demo's tiny base, CPU
    .venv/bin/python benchmarks/train_step.py --threads 1
    .venv/bin/python benchmarks/train_step.py --model smollm2 --tuning lora,full \
        --heads full,chunked --layouts packed --updates 1 --warmup 0 --repeats 1   # a real model's memory

The batch: for `--model tiny`, one GRPO step's rollouts of the demo (8 questions × 8 samples, the engine at
temperature 1.0), so its lengths spread as RL trajectories do; for any other model (`--batch synthetic`),
`--episodes` random-token trajectories of `--min-len`..`--max-len` tokens in groups of `--group` (prompt,
then reasoning / observation turns, then an answer), the shape of a real model's GRPO batch. Variants, each
in a fresh process on that same batch (so its peak memory is its own), one per combination of:
- layout: `padded` (`--rows` rows per forward in batch order, right-padded to the longest: the previous path)
  or `packed` (token-budgeted micro-batches of `--tokens`, sequences end to end: models/packing.py);
- head: `chunked` (logprobs and entropies `--chunk` tokens at a time: models/head.py) or `full` (the
  micro-batch's full float32 logits at once: the previous path);
- tuning: `full` (every weight) or `lora` (rank `--lora-rank` on every linear layer, peft);
- precision: `fp32` or `bf16` (the update under bf16 autocast, float32 weights: train.precision).
Tokens/s counts real (non-padding) tokens; the first `--warmup` updates of each process are not timed.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import load_model, measure, set_threads

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from arlkit.config import AlgoConfig, CriticConfig
from arlkit.models.loading import Policy
from arlkit.models.precision import autocast
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import RolloutParams, rollout
from arlkit.train.memory import peak_rss_mb, reset_peak_rss
from arlkit.train.update import Optimisers, UpdateBatch, update
from arlkit.trajectory import Role, Trajectory, collate


def make_batch(args: argparse.Namespace, path: Path) -> dict:
    """Make the benchmark's batch (module docstring), compute GRPO advantages; save both to `path`."""
    set_threads(args.threads)
    model, tok, task = load_model(args.model, args.device, args.dtype)
    if args.batch == "rollout":
        rows = [r for r in task.rows("rl", args.episodes // args.group, seed=11) for _ in range(args.group)]
        params = RolloutParams(4, 48, 1024, 1.0, 1.0)
        engine = ContinuousEngine(model, tok.pad_token_id, max_slots=len(rows), seed=0)
        trajs = rollout(engine, tok, task.make_env, rows, [i // args.group for i in range(len(rows))], params)
    else:
        trajs = synthetic_trajectories(args, model.config.vocab_size)
    batch = collate(trajs, tok.pad_token_id)
    inputs = AdvantageInputs(batch.token_rewards, batch.loss_mask, batch.group_index)
    adv = ADVANTAGES.get("grpo")(inputs, AdvantageParams()).advantages
    torch.save({"batch": batch, "advantages": adv}, path)
    lengths = batch.attention_mask.sum(-1).float()
    return {"lengths": lengths.tolist(), "width": batch.input_ids.shape[1]}


def synthetic_trajectories(args: argparse.Namespace, vocab: int) -> list[Trajectory]:
    """`args.episodes` trajectories of random tokens, lengths uniform in [min_len, max_len]: a 150-token prompt,
    then turns of 60 reasoning/action tokens and 100 observation tokens, the rest an answer; reward 0 or 1."""
    rng = random.Random(0)
    trajs = []
    for i in range(args.episodes):
        n = rng.randint(args.min_len, args.max_len)
        spans = [(Role.PROMPT, 150)]
        while sum(k for _, k in spans) + 160 < n - 20:
            spans += [(Role.REASONING, 40), (Role.ACTION, 20), (Role.OBSERVATION, 100)]
        spans.append((Role.ANSWER, n - sum(k for _, k in spans)))
        roles = [int(r) for r, k in spans for _ in range(k)]
        gen = [r not in (Role.PROMPT, Role.OBSERVATION) for r in roles]
        trajs.append(
            Trajectory(
                token_ids=[rng.randrange(vocab) for _ in range(n)],
                roles=roles,
                logprobs=[-1.0 if g else float("nan") for g in gen],
                turn=[0] * n,
                reward=float(rng.random() < 0.5),
                group_id=i // args.group,
            )
        )
    return trajs


def run_variant(variant: tuple[str, str, str, str], args: argparse.Namespace, path: Path) -> dict:
    """One process: load the model, tune it as `variant` says, time `args.updates` updates on the batch."""
    layout, head, tuning, precision = variant
    set_threads(args.threads)
    model, tok, _ = load_model(args.model, args.device, args.dtype)
    if tuning == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear")
        model = get_peft_model(model, lora)
    saved = torch.load(path, weights_only=False)
    data = UpdateBatch(batch=saved["batch"], advantages=saved["advantages"])
    algo = AlgoConfig(
        micro_batch_size=args.rows,
        # the tiny batch's padded baseline is the row-count path (no token budget), as before this option
        micro_batch_tokens=args.tokens if layout == "packed" or args.batch == "synthetic" else None,
        packing=layout == "packed",
        head_chunk_tokens=args.chunk if head == "chunked" else None,
    )
    policy = Policy(model=model.train(), tokenizer=tok, lora=tuning == "lora")
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-6)
    opts = Optimisers(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        with autocast(torch.device(args.device), precision):
            update(policy, opts, data, algo, CriticConfig(), 1.0, gen)

    for _ in range(args.warmup):
        one()
    load_peak_mb = reset_peak_rss()
    start = time.perf_counter()
    for _ in range(args.updates):
        one()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.updates
    tokens = int(data.batch.attention_mask.sum())
    return {
        "tokens": tokens,
        "seconds": seconds,
        "update_peak_mb": peak_rss_mb(),
        "load_peak_mb": load_peak_mb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | qwen2-0.5b | a local model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--batch", choices=["rollout", "synthetic"], help="default: rollout for tiny, else synthetic"
    )
    p.add_argument("--episodes", type=int, default=None, help="default: 64 (rollout), 32 (synthetic)")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--min-len", type=int, default=400, help="synthetic trajectory lengths")
    p.add_argument("--max-len", type=int, default=700)
    p.add_argument("--rows", type=int, default=32, help="micro_batch_size (all variants)")
    p.add_argument("--tokens", type=int, default=8192, help="micro_batch_tokens (packed; synthetic: all)")
    p.add_argument("--chunk", type=int, default=1024, help="head_chunk_tokens of the chunked head")
    p.add_argument("--layouts", default="padded,packed")
    p.add_argument("--heads", default="chunked", help="chunked, full or both (full,chunked)")
    p.add_argument("--tuning", default="full", help="full, lora or both (lora,full)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or both (fp32,bf16)")
    p.add_argument("--updates", type=int, default=3, help="timed updates per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.batch = args.batch or ("rollout" if args.model == "tiny" else "synthetic")
    args.episodes = args.episodes or (64 if args.batch == "rollout" else 32)
    dims = (args.layouts, args.heads, args.tuning, args.precision)
    variants = list(itertools.product(*(d.split(",") for d in dims)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.pt"
        info = measure(make_batch, args, path)
        runs = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in runs:
                runs[v].append(measure(run_variant, v, args, path))
    report(args, info, runs)


def report(args: argparse.Namespace, info: dict, runs: dict[tuple[str, str, str, str], list[dict]]) -> None:
    lengths = sorted(info["lengths"])
    real = sum(lengths)
    padded_tokens = sum(
        len(chunk) * max(chunk)
        for chunk in (info["lengths"][i : i + args.rows] for i in range(0, len(lengths), args.rows))
    )
    print(f"model {args.model} · {args.dtype} · {args.device} · threads {args.threads or 'default'}")
    print(
        f"batch ({args.batch}): {len(lengths)} trajectories, {real:.0f} tokens, lengths min {lengths[0]:.0f} / "
        f"median {statistics.median(lengths):.0f} / max {lengths[-1]:.0f}; padded forwards of {args.rows} rows "
        f"compute {padded_tokens:.0f} tokens ({1 - real / padded_tokens:.0%} padding); micro_batch_tokens "
        f"{args.tokens}, head chunk {args.chunk}"
    )
    print(
        f"{'layout':<8}{'head':<9}{'tuning':<8}{'prec':<6}{'tokens/s':>10}{'× first':>9}{'s/update':>10}"
        f"{'update peak MB':>16}{'process peak MB':>17}{'runs tokens/s':>24}"
    )
    rates = {v: [r["tokens"] / r["seconds"] for r in rs] for v, rs in runs.items()}
    base = statistics.median(next(iter(rates.values())))
    for v, rs in runs.items():
        med = statistics.median(rates[v])
        secs = statistics.median(r["seconds"] for r in rs)
        peak = max(r["peak_mb"] for r in rs)
        update_peak = max(r["update_peak_mb"] for r in rs)
        print(
            f"{v[0]:<8}{v[1]:<9}{v[2]:<8}{v[3]:<6}{med:>10.0f}{med / base:>9.2f}{secs:>10.2f}{update_peak:>16.0f}{peak:>17.0f}"
            f"{' / '.join(f'{x:.0f}' for x in rates[v]):>24}"
        )


if __name__ == "__main__":
    main()
