"""Micro-batches accumulate the mini-batch's gradient when a row is empty (no generated token takes loss, as a
filter or `algo.loss_roles` can leave it): the seq-mean aggregations divide by non-empty rows (verl), and each
micro-batch's weight must be its share of those rows, not of all rows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.train.loop import collect, prepare, setup
from arlkit.train.update import Optimisers, update
from arlkit.trajectory import collate


@pytest.mark.parametrize("aggregation", ["seq_mean_token_sum", "seq_mean_token_mean", "token_mean"])
def test_one_row_micro_batches_with_an_empty_row_equal_one_micro_batch(tiny, tmp_path, aggregation):
    overrides = tiny_run_overrides(
        tiny.sft_dir,
        tmp_path / "run",
        f"algo.aggregation={aggregation}",
        "algo.micro_batch_tokens=null",  # micro_batch_size rows per forward
        "algo.grad_clip=1e9",  # compare raw gradients
        "train.seed=3",
    )
    cfg = load_config(None, overrides)
    s = setup(cfg, Console(quiet=True))
    batch = collate(collect(s).trajectories, s.policy.tokenizer.pad_token_id)
    mask = batch.loss_mask.clone()
    mask[0] = 0.0  # row 0 takes no loss
    data = prepare(s, replace(batch, loss_mask=mask), None)
    assert data.advantages.abs().sum() > 0
    params = dict(s.policy.model.named_parameters())
    start = {k: p.detach().clone() for k, p in params.items()}
    moves = {}
    for rows in (batch.input_ids.shape[0], 1):
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(start[k])
        opt = torch.optim.SGD(s.policy.trainable_parameters(), lr=1.0)  # each move is minus the gradient
        algo = cfg.algo.model_copy(update={"micro_batch_size": rows})
        opts = Optimisers(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
        update(
            s.policy, opts, data, algo, cfg.critic, 1.0, torch.Generator().manual_seed(0), cfg.token_budget
        )
        moves[rows] = {k: p.detach() - start[k] for k, p in params.items()}
    whole, split = moves[batch.input_ids.shape[0]], moves[1]
    assert any(m.abs().max() > 0 for m in whole.values())
    for k in whole:
        assert torch.allclose(split[k], whole[k], atol=1e-6, rtol=1e-4), k
