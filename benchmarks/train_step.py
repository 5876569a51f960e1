"""Tokens/s of one RL update (forward + backward + optimiser step), packed against padded, in the same run.

    .venv/bin/python benchmarks/train_step.py                  # the demo's tiny base, CPU
    .venv/bin/python benchmarks/train_step.py --threads 1

The batch is real: one GRPO step's rollouts of the demo (8 questions × 8 samples, the engine at temperature
1.0), so its lengths spread as RL trajectories do. Variants, each in a fresh process on that same batch:
- padded: `micro_batch_size` rows per forward in batch order, right-padded to the longest (the previous path);
- packed: token-budgeted micro-batches (`--tokens`), sequences packed end to end (models/packing.py).
Tokens/s counts real (non-padding) tokens; the first update of each process is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import load_model, measure, set_threads

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from arlkit.config import AlgoConfig, CriticConfig
from arlkit.models.loading import Policy
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import RolloutParams, rollout
from arlkit.train.update import Optimisers, UpdateBatch, update
from arlkit.trajectory import collate


def make_batch(args: argparse.Namespace, path: Path) -> dict:
    """Roll out one GRPO step with the engine, collate it, compute GRPO advantages; save to `path`."""
    set_threads(args.threads)
    model, tok, task = load_model(args.model, args.device, args.dtype)
    rows = [r for r in task.rows("rl", args.episodes // args.group, seed=11) for _ in range(args.group)]
    params = RolloutParams(4, 48, 1024, 1.0, 1.0)
    engine = ContinuousEngine(model, tok.pad_token_id, max_slots=len(rows), seed=0)
    trajs = rollout(engine, tok, task.make_env, rows, [i // args.group for i in range(len(rows))], params)
    batch = collate(trajs, tok.pad_token_id)
    inputs = AdvantageInputs(batch.token_rewards, batch.loss_mask, batch.group_index)
    adv = ADVANTAGES.get("grpo")(inputs, AdvantageParams()).advantages
    torch.save({"batch": batch, "advantages": adv}, path)
    lengths = batch.attention_mask.sum(-1).float()
    return {"lengths": lengths.tolist(), "width": batch.input_ids.shape[1]}


def run_variant(name: str, args: argparse.Namespace, path: Path) -> dict:
    set_threads(args.threads)
    model, tok, _ = load_model(args.model, args.device, args.dtype)
    saved = torch.load(path, weights_only=False)
    data = UpdateBatch(batch=saved["batch"], advantages=saved["advantages"])
    packed = name == "packed"
    algo = AlgoConfig(
        micro_batch_size=args.rows,
        micro_batch_tokens=args.tokens if packed else None,
        packing=packed,
    )
    policy = Policy(model=model.train(), tokenizer=tok)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-6)
    opts = Optimisers(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        update(policy, opts, data, algo, CriticConfig(), 1.0, gen)

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(args.updates):
        one()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.updates
    return {"tokens": int(data.batch.attention_mask.sum()), "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | qwen2-0.5b | a local model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--rows", type=int, default=32, help="micro_batch_size (both variants)")
    p.add_argument("--tokens", type=int, default=8192, help="micro_batch_tokens (packed)")
    p.add_argument("--updates", type=int, default=3, help="timed updates per process")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.pt"
        info = measure(make_batch, args, path)
        runs = {n: [] for n in ("padded", "packed")}
        for _ in range(args.repeats):
            for n in runs:
                runs[n].append(measure(run_variant, n, args, path))
    lengths = sorted(info["lengths"])
    real = sum(lengths)
    padded_tokens = sum(
        len(chunk) * max(chunk)
        for chunk in (info["lengths"][i : i + args.rows] for i in range(0, len(lengths), args.rows))
    )
    print(f"model {args.model} · {args.dtype} · {args.device} · threads {args.threads or 'default'}")
    print(
        f"batch: {len(lengths)} trajectories, {real:.0f} tokens, lengths min {lengths[0]:.0f} / median "
        f"{statistics.median(lengths):.0f} / max {lengths[-1]:.0f}; padded forwards compute {padded_tokens:.0f} "
        f"tokens ({1 - real / padded_tokens:.0%} padding)"
    )
    print(
        f"{'variant':<8}{'tokens/s':>10}{'× padded':>10}{'s/update':>10}{'peak MB':>9}{'runs tokens/s':>28}"
    )
    rates = {n: [r["tokens"] / r["seconds"] for r in rs] for n, rs in runs.items()}
    base = statistics.median(rates["padded"])
    for n, rs in runs.items():
        med = statistics.median(rates[n])
        secs = statistics.median(r["seconds"] for r in rs)
        peak = max(r["peak_mb"] for r in rs)
        print(
            f"{n:<8}{med:>10.0f}{med / base:>10.2f}{secs:>10.2f}{peak:>9.0f}"
            f"{' / '.join(f'{x:.0f}' for x in rates[n]):>28}"
        )


if __name__ == "__main__":
    main()
