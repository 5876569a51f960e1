"""Data-parallel training (train/distributed.py): 2 processes on gloo give the single-process update."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_overrides
from rich.console import Console

import arlkit.train.loop as loop
from arlkit.config import load_config
from arlkit.train.distributed import Dist, prompt_index, reduce_metrics, shard, unshard
from arlkit.train.setup import setup

WORKER = Path(__file__).parent / "dist_worker.py"


def _torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ARLKIT_CACHE": str(cwd / "cache"), "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=420)


def test_strided_prompts_and_shards_cover_the_stream_once() -> None:
    ranks = [Dist(rank=r, world_size=3) for r in range(3)]
    # each rank's first 4 local prompts: rank r gets r, r+3, r+6, r+9 -> together 0..11, each once
    got = sorted(prompt_index(i, d) for d in ranks for i in range(4))
    assert got == list(range(12))
    items = list("abcdefg")
    parts = [shard(items, d) for d in ranks]
    assert parts == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    # gather concatenates the parts in rank order; unshard puts them back in place
    assert unshard([x for p in parts for x in p], ranks[0]) == items
    one = Dist()
    assert prompt_index(5, one) == 5 and shard(items, one) == items
    assert reduce_metrics({"a": 1.0}, 3, one) == {"a": 1.0}  # one process: untouched


@pytest.fixture(scope="module")
def job(tiny, tmp_path_factory) -> tuple[Path, dict, dict]:
    """Rollouts of 4 prompts × 4 generated once; the single-process update of each variant on them."""
    root = tmp_path_factory.mktemp("dist")
    gen = load_config(None, tiny_run_overrides(tiny.sft_dir, root / "gen", "rollout.prompts_per_step=4"))
    trajs = loop.collect(setup(gen, Console(quiet=True))).trajectories
    assert len({t.group_id for t in trajs}) == 4 and len({t.total_reward for t in trajs}) > 1
    common = ("rollout.prompts_per_step=4", "train.n_samples=0")
    variants = {
        # several token-budgeted micro-batches per rank, uneven between ranks
        "token_mean": tiny_run_overrides(tiny.sft_dir, root / "a", *common, "algo.micro_batch_tokens=96"),
        # a row-share aggregation, a KL term (reference forward) and two optimiser steps (off-policy ratio)
        "seq_sum_kl_2ep": tiny_run_overrides(
            tiny.sft_dir,
            root / "b",
            *common,
            "algo.aggregation=seq_mean_token_sum",
            "algo.kl_coef=0.05",
            "algo.epochs=2",
        ),
        # rank 1 has nothing to learn from: it joins rank 0's gradient sums with an empty batch
        "rank1_idle": tiny_run_overrides(tiny.sft_dir, root / "c", *common, "#rank0_only"),
        # sharded weights (FSDP2): uneven micro-batch counts (empty passes fill them), a KL term, 2 epochs
        "fsdp": tiny_run_overrides(
            tiny.sft_dir,
            root / "d",
            *common,
            "train.strategy=fsdp",
            "algo.micro_batch_tokens=96",
            "algo.kl_coef=0.05",
            "algo.epochs=2",
        ),
        # FSDP over a LoRA model: frozen base shards, trained adapters, the reference with adapters disabled
        "fsdp_lora": tiny_run_overrides(
            tiny.sft_dir,
            root / "e",
            *common,
            "train.strategy=fsdp",
            "model.lora.rank=4",
            "algo.kl_coef=0.05",
            "algo.lr=1e-3",
        ),
    }
    path = root / "job.pkl"
    path.write_bytes(pickle.dumps({"variants": variants, "trajectories": trajs}))
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker

    single = {}
    try:
        for name, ov in variants.items():
            # the global batch of "rank1_idle" is rank 0's groups (prompts 0 and 2) alone
            mine = [t for t in trajs if t.group_id % 2 == 0] if name == "rank1_idle" else trajs
            single[name] = dist_worker.run_variant(ov, mine)
    finally:
        loop.collect = _collect  # run_variant replaced it
    return path, single, variants


_collect = loop.collect


def test_two_gloo_ranks_update_like_one_process(tiny, job, tmp_path) -> None:
    path, single, variants = job
    out = _torchrun(str(WORKER), str(path), str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    for name in variants:
        res = torch.load(tmp_path / f"{name}.pt")
        p1, m1 = single[name]
        p2, m2 = res["params"], res["metrics"]
        assert m2["_world"] == 2.0 and m1["_world"] == 1.0
        if name.startswith("fsdp"):  # the trained copy really is split: each rank holds about half of it
            assert 0.4 < m2["_trained_share"] < 0.6 and m1["_trained_share"] == 1.0
        assert m2["_rank_trajectories"] == 8.0  # rank 0 held 2 of the 4 groups (prompts 0 and 2)
        assert m1["_moved"] > 1e-4 and m2["_moved"] > 1e-4, name  # the update is not trivially zero
        diff = max(float((p1[k] - p2[k]).abs().max()) for k in p1)
        assert diff < 1e-5, (name, diff)  # measured: 7e-8 and 1.2e-7
        # the reduced metrics are those of the global batch: the same trajectories (equal counts per rank),
        # the same summed gradient
        assert m2["rollout/reward"] == pytest.approx(m1["rollout/reward"], abs=1e-6)
        assert m2["actor/grad_norm"] == pytest.approx(m1["actor/grad_norm"], rel=1e-4)
    reduced = torch.load(tmp_path / "token_mean.pt")["reduced"]
    # rank 0: reward 0 weight 1; rank 1: reward 1 weight 2 -> (0·1 + 1·2) / 3
    assert reduced["rollout/reward"] == pytest.approx(2 / 3)
    assert reduced["timing_s/update"] == 1.0  # slowest rank
    assert reduced["perf/gen_tokens_per_s"] == 20.0  # throughputs add up
    assert reduced["rollout/advantage_max"] == 1.0 and reduced["rollout/advantage_min"] == 0.0
    assert reduced["tao/only_rank0"] == 7.0  # a key one rank lacks comes from the others


def test_torchrun_arlkit_train_writes_once(tiny, tmp_path) -> None:
    """`torchrun -m arlkit train` end to end: one step, sharded eval, rank 0 alone writes the run folder."""
    cfg = {
        "model": {"path": str(tiny.sft_dir)},
        "task": {"n_people": 120, "max_turns": 2, "n_eval": 5, "fmt": "hermes"},
        "rollout": {"n": 2, "prompts_per_step": 2, "max_new_tokens": 8},
        "train": {"steps": 1, "device": "cpu", "run_dir": str(tmp_path / "run")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = _torchrun("-m", "arlkit", "train", str(tmp_path / "cfg.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final"]
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in records if "actor/pg_loss" in r]
    assert [r["step"] for r in train_rows] == [1]  # one line per step, not one per rank
    evals = [r for r in records if "eval/em" in r]
    # 5 held-out rows split 3 + 2 over the ranks, gathered back: metrics over all 5
    assert [(r["step"], r["eval/n"]) for r in evals] == [(0, 5.0), (1, 5.0)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["n"] == 5.0


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp_1node.yaml", "MULTI_GPU"), ("ddp_2nodes.yaml", "MULTI_GPU"), ("fsdp_1node.yaml", "FSDP")],
)
def test_shipped_accelerate_configs_load(name: str, kind: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(Path(__file__).parents[1] / "configs" / "accelerate" / name))
    assert cfg.distributed_type.value == kind
    assert cfg.num_processes == 8 * cfg.num_machines  # 8 GPUs per machine


@pytest.mark.parametrize(
    ("override", "field"),
    [("critic.kind=value_head", "critic.kind"), ("model.routing.kind=dart", "model.routing")],
)
def test_fsdp_refuses_what_it_cannot_shard(override: str, field: str) -> None:
    from arlkit.errors import ArlkitError
    from arlkit.train.fsdp import check_supported

    check_supported(load_config(None, ["train.strategy=fsdp"]))  # the default GRPO config is fine
    with pytest.raises(ArlkitError, match=field):
        check_supported(load_config(None, ["train.strategy=fsdp", override]))


def test_fsdp_run_resumes_exactly(tiny, tmp_path) -> None:
    """`torchrun -m arlkit train` with sharded weights: a run resumed from its step-1 checkpoint ends with the
    weights of the uninterrupted run (the gathered optimiser state sliced back into shards, each rank's data
    cursor and random streams restored)."""
    from safetensors.torch import load_file

    cfg = {
        "model": {"path": str(tiny.sft_dir)},
        "task": {"n_people": 120, "max_turns": 2, "n_eval": 0, "fmt": "hermes"},
        "rollout": {"n": 4, "prompts_per_step": 4, "max_new_tokens": 16},
        "train": {
            "steps": 2,
            "device": "cpu",
            "save_every": 1,
            "strategy": "fsdp",
            "n_samples": 0,
            "run_dir": str(tmp_path / "run"),
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = _torchrun("-m", "arlkit", "train", str(tmp_path / "cfg.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    ckpts = tmp_path / "run" / "checkpoints"
    whole = load_file(ckpts / "final" / "model.safetensors")
    start = load_file(ckpts / "step_1" / "model.safetensors")
    assert max(float((whole[k] - start[k]).abs().max()) for k in whole) > 1e-4  # step 2 moved the weights
    for gone in (ckpts / "step_2", ckpts / "final"):
        shutil.rmtree(gone)
    (tmp_path / "run" / "summary.json").unlink()
    out = _torchrun("-m", "arlkit", "train", str(tmp_path / "cfg.yaml"), "--resume", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from" in out.stdout
    again = load_file(ckpts / "final" / "model.safetensors")
    diff = max(float((whole[k] - again[k]).abs().max()) for k in whole)
    assert diff < 1e-6, diff
