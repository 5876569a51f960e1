"""Short RL runs on the tiny model (full fine-tuning, LoRA, KL) and SFT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from arlkit.config import load_config
from arlkit.models.tiny import demo_trajectory, new_model
from arlkit.train.loop import setup, train, train_step
from arlkit.train.sft import SFTParams, sft


def _overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_overrides(model_dir, run_dir, *extra)


def _quiet() -> Console:
    return Console(quiet=True)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


@pytest.fixture(scope="module")
def grpo_run(tiny, tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    summary = train(load_config(None, _overrides(tiny.sft_dir, run_dir)), _quiet())
    return summary, run_dir


def test_grpo_run_summary_and_files(tiny, grpo_run) -> None:
    summary, run_dir = grpo_run
    assert summary["steps"] == 2 and summary["n_eval"] == 8 and Path(summary["run_dir"]) == run_dir
    for phase in ("base", "final"):
        for k in ("em", "f1"):
            assert 0.0 <= summary[phase][k] <= 1.0
        assert summary[phase]["n"] == 8.0
    assert json.loads((run_dir / "summary.json").read_text())["final"] == summary["final"]
    for name in ("summary.json", "curves.png", "samples.jsonl", "metrics.jsonl", "config.yaml"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "actor/pg_loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "rollout/reward"):
            assert r[key] is not None and math.isfinite(r[key]), (key, r)
        # on-policy (1 epoch, 1 mini-batch): π_old is the current policy, so the ratio is 1
        assert r["actor/ratio_mean"] == pytest.approx(1.0)
        # recomputed logprobs agree with those recorded at generation
        assert r["rollout/logprob_diff"] < 1e-3
    assert any(r["actor/grad_norm"] > 0 for r in steps)  # rewards varied within some group
    evals = [r for r in records if "eval/em" in r]
    assert [r["step"] for r in evals] == [0, 2]

    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}
    s = samples[0]
    assert len(s["token_ids"]) == len(s["roles"]) == len(s["logprobs"])
    assert s["text"].startswith("<|im_start|>") and s["text"] == tiny.tokenizer.decode(s["token_ids"])


def test_grpo_run_changes_every_weight_and_checkpoint_loads(tiny, grpo_run) -> None:
    _, run_dir = grpo_run
    final_dir = run_dir / "checkpoints" / "final"
    before, after = _weights(tiny.sft_dir), _weights(final_dir)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], unchanged  # full fine-tuning: every tensor moved
    assert all(torch.isfinite(v).all() for v in after.values())
    # the checkpoint is a complete HF folder: tokenizer included, loads and runs
    tok = AutoTokenizer.from_pretrained(final_dir)
    assert tok.encode("Where was Ana Berg born?") == tiny.tokenizer.encode("Where was Ana Berg born?")
    model = AutoModelForCausalLM.from_pretrained(final_dir)
    ids = torch.tensor([tok.encode("Where was")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_lora_updates_only_adapters_with_kl(tiny, tmp_path) -> None:
    cfg = load_config(
        None,
        _overrides(
            tiny.sft_dir, tmp_path / "run", "model.lora.rank=4", "algo.kl_coef=0.1", "algo.kl_estimator=k3"
        ),
    )
    s = setup(cfg, _quiet())
    assert s.policy.lora and s.policy.ref_model is None  # the reference is the base with adapters off
    before = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}
    trainable = {k for k, p in s.policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    metrics = [train_step(s, 1), train_step(s, 2)]
    after = dict(s.policy.model.named_parameters())
    for k, v in before.items():
        if k in trainable:
            continue
        assert torch.equal(v, after[k]), f"frozen base weight {k} changed"
    lora_b = [k for k in trainable if "lora_B" in k]
    assert lora_b and all(not torch.equal(before[k], after[k]) for k in lora_b)  # B starts at 0
    for m in metrics:
        assert math.isfinite(m["actor/kl"]) and m["actor/kl"] >= 0.0
        assert math.isfinite(m["actor/pg_loss"]) and math.isfinite(m["actor/grad_norm"])
    # step 1: adapters are 0, the policy is the reference, so KL is 0; after one update it is positive
    assert metrics[0]["actor/kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics[1]["actor/kl"] > 0.0
    # the adapter is saved alone, and loads back with peft onto the untouched base
    from peft import PeftModel

    from arlkit.train.loop import save_checkpoint

    path = save_checkpoint(s, "final")
    assert (path / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny.sft_dir)
    peft_model = PeftModel.from_pretrained(base, path)
    loaded = dict(peft_model.named_parameters())
    for k in lora_b:
        assert torch.equal(loaded[k], after[k])


def test_full_finetune_kl_uses_frozen_reference(tiny, tmp_path) -> None:
    cfg = load_config(
        None,
        _overrides(tiny.sft_dir, tmp_path / "run", "algo.kl_coef=0.1"),
    )
    s = setup(cfg, _quiet())
    ref = s.policy.ref_model
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    m1, m2 = train_step(s, 1), train_step(s, 2)
    assert m1["actor/grad_norm"] > 0  # the first update moved the policy
    assert m1["actor/kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference before any update
    assert math.isfinite(m2["actor/kl"]) and m2["actor/kl"] > 0.0
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_before.items())


def test_sft_lowers_the_loss(tiny) -> None:
    task, tok = tiny.task, tiny.tokenizer
    rows = task.rows("train", 20, seed=5)
    demos = [
        demo_trajectory(task, tok, r, ("none", "first_hop", "all_hops")[i % 3]) for i, r in enumerate(rows)
    ]
    model = new_model(tiny.recipe, tok)
    seen = []
    losses = sft(
        model,
        demos,
        tok.pad_token_id,
        SFTParams(steps=15, batch_size=4, lr=5e-3, warmup=2),
        on_step=lambda s, loss: seen.append((s, loss)),
    )
    assert len(losses) == 15 and [s for s, _ in seen] == list(range(15))
    assert all(math.isfinite(x) for x in losses)
    # a random model starts near ln(V) ≈ ln(612) ≈ 6.4 nats per generated token
    assert losses[0] == pytest.approx(math.log(len(tok)), abs=0.5)
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0


def test_bucketed_batches_cover_each_epoch_once_with_little_padding() -> None:
    import itertools
    import random

    from arlkit.train.sft import bucketed_batches

    rnd = random.Random(0)
    lengths = [rnd.randint(20, 220) for _ in range(1000)]
    gen = torch.Generator().manual_seed(0)
    batches = list(itertools.islice(bucketed_batches(lengths, 32, 8, gen), 64))
    first_epoch = [i for b in batches[:32] for i in b]  # 1000 examples: 31 full batches and one of 8
    assert sorted(first_epoch[:1000]) == list(range(1000))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches[:32])
    # a window of 256 sorted examples leaves each batch a narrow length range: under 10% padding
    assert sum(lengths) / padded > 0.9
    again = list(itertools.islice(bucketed_batches(lengths, 32, 8, torch.Generator().manual_seed(0)), 64))
    assert again == batches  # deterministic from the seed


def test_sft_micro_batches_accumulate_the_batch_gradient(tiny) -> None:
    """Packed micro-batches of at most 300 tokens take the same step as the whole padded batch at once."""
    task, tok = tiny.task, tiny.tokenizer
    rows = task.rows("train", 8, seed=6)
    demos = [demo_trajectory(task, tok, r, ("first_hop", "all_hops")[i % 2]) for i, r in enumerate(rows)]
    assert sum(len(d) for d in demos) > 2 * 300  # so the batch really is cut into several micro-batches
    models, losses = [], []
    for micro in (None, 300):
        model = new_model(tiny.recipe, tok)
        params = SFTParams(steps=2, batch_size=8, lr=1e-3, warmup=1, micro_batch_tokens=micro)
        losses.append(sft(model, demos, tok.pad_token_id, params))
        models.append(model)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # AdamW divides by sqrt(v): for weights whose gradient is ~0 a summation-order difference moves them by up to
    # lr, so compare the weights as a whole: the two steps agree to well under 1% of the step taken
    start = new_model(tiny.recipe, tok).state_dict()
    for name, a in models[0].state_dict().items():
        b, moved = models[1].state_dict()[name], (a - start[name]).norm()
        assert (a - b).norm() <= 1e-2 * moved + 1e-7, name
