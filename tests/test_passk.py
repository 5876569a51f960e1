"""PASS@(k,T): the unbiased estimator against brute-force enumeration, boundaries and exclusive solves by hand,
and `arlkit passk` end to end on the tiny fixture models (in process and through the CLI)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.eval.passk import (
    analyse,
    cap_summary,
    efficiency,
    exclusive_solves,
    k_grid,
    pass_at_k,
    pass_curve,
)
from arlkit.eval.passk_run import run_passk


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_estimator_equals_enumeration_of_k_subsets(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_estimator_by_hand_and_at_the_edges() -> None:
    # n = 4, c = 1, k = 2: 1 − C(3,2)/C(4,2) = 1 − 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n = 10, c = 3, k = 1: the plain success rate 3/10
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # n = 64, c = 2, k = 4: 1 − (62·61·60·59)/(64·63·62·61) = 1 − (60·59)/(64·63) = 1 − 3540/4032
    assert pass_at_k(64, 2, 4) == pytest.approx(1 - 3540 / 4032)
    for n in (1, 7, 64):
        for k in k_grid(n):
            assert pass_at_k(n, 0, k) == 0.0  # never solved
            assert pass_at_k(n, n, k) == 1.0  # always solved
        assert pass_at_k(n, 1, n) == 1.0  # k = n holds the one correct sample
    assert (
        pass_at_k(10, 8, 3) == 1.0
    )  # only 2 failures: every 3-subset holds a correct one (exact, no rounding)
    for bad in ((4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_k_grid() -> None:
    assert k_grid(64) == [1, 2, 4, 8, 16, 32, 64]
    assert k_grid(10) == [1, 2, 4, 8, 10]  # n itself closes the grid
    assert k_grid(1) == [1]


def test_boundary_exclusive_solves_and_efficiency_by_hand() -> None:
    n = 4
    a = [4, 0, 2, 1, 0]  # solves q0, q2, q3
    b = [1, 3, 0, 1, 0]  # solves q0, q1, q3
    assert exclusive_solves(a, b) == (1, 1)  # q2 only a; q1 only b
    # commonly solved: q0, q3. a: (4 + 1)/(4·2) = 0.625; b: (1 + 1)/8 = 0.25
    assert efficiency({"a": a, "b": b}, n) == {"a": pytest.approx(0.625), "b": pytest.approx(0.25)}
    s = cap_summary({"a": a, "b": b}, n, [1, 4])
    assert s["boundary"] == {"a": 3, "b": 3} and s["exclusive"] == {"a|b": [1, 1]} and s["common_solved"] == 2
    # PASS@1 = mean c/n: a (4+0+2+1+0)/20 = 0.35; PASS@4 = share solved: 3/5
    assert s["pass_at_k"]["a"] == [pytest.approx(0.35), pytest.approx(0.6)]
    assert all(math.isnan(v) for v in efficiency({"a": [1, 0], "b": [0, 1]}, n).values())  # nothing common


def test_analyse_by_kind_and_order_invariance() -> None:
    n = 4
    counts = {"x": {0: [0, 4, 1, 2], 2: [3, 4, 0, 2]}, "y": {0: [1, 0, 0, 2], 2: [4, 4, 4, 0]}}
    kinds = ["1hop", "2hop", "1hop", "2hop"]
    res = analyse(counts, n, kinds)
    assert res["caps"] == [0, 2] and res["k"] == [1, 2, 4] and res["n_questions"] == 4
    assert res["by_kind"]["1hop"]["n_questions"] == 2
    # 1hop at T=0 for x: questions 0 and 2 with c = 0, 1 → PASS@1 = (0 + 1/4)/2
    assert res["by_kind"]["1hop"]["by_cap"]["0"]["pass_at_k"]["x"][0] == pytest.approx(0.125)
    perm = [2, 0, 3, 1]
    shuffled = {p: {t: [c[i] for i in perm] for t, c in per.items()} for p, per in counts.items()}
    again = analyse(shuffled, n, [kinds[i] for i in perm])
    assert json.dumps(again["by_cap"], sort_keys=True) == json.dumps(res["by_cap"], sort_keys=True)
    assert pass_curve([], n, [1, 2]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="every cap"):
        analyse({"x": {0: [1]}, "y": {1: [1]}}, n)


def _passk_overrides(tiny, run_dir: Path) -> list[str]:
    return [
        *tiny_run_overrides(tiny.sft_dir, run_dir),
        f"passk.policies.random={tiny.model_dir}",
        f"passk.policies.sft={tiny.sft_dir}",
        "passk.n=4",
        "passk.caps=[0, 1]",
        "passk.n_questions=3",
        "passk.questions_per_batch=2",
        "train.n_samples=2",
    ]


@pytest.fixture(scope="module")
def passk_run(tiny, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("passk") / "run"
    cfg = load_config(None, _passk_overrides(tiny, run_dir))
    return run_passk(cfg, Console(quiet=True)), run_dir


def test_passk_run_writes_numbers_report_and_figures(passk_run) -> None:
    res, run_dir = passk_run
    assert res["policies"] == ["random", "sft"] and res["caps"] == [0, 1] and res["k"] == [1, 2, 4]
    assert len(res["questions"]) == res["n_questions"] == 3
    assert len({q["question"] for q in res["questions"]}) == 3  # distinct questions
    for name in (
        "passk.json",
        "report.md",
        "passk_curves.png",
        "passk_boundary.png",
        "passk_heatmap_sft.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "passk_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "passk.json").read_text())["counts"] == res["counts"]
    report = (run_dir / "report.md").read_text()
    assert "![passk_curves.png](passk_curves.png)" in report and "| sft |" in report
    for p in res["policies"]:
        for t in ("0", "1"):
            counts = res["counts"][p][t]
            assert all(0 <= c <= 4 for c in counts)
            curve = res["by_cap"][t]["pass_at_k"][p]
            assert curve[0] == pytest.approx(sum(counts) / (4 * 3))  # PASS@1 = mean success rate
            assert curve == sorted(curve)  # PASS@k never falls with k
            assert res["by_cap"][t]["boundary"][p] == sum(c > 0 for c in counts)
        assert res["tool_rounds"][p]["0"] == 0.0  # T = 0 refuses every call: no round runs
        assert res["tool_rounds"][p]["1"] <= 1.0


def test_cap_zero_refuses_every_call_in_the_samples(passk_run) -> None:
    _, run_dir = passk_run
    rows = [json.loads(line) for line in (run_dir / "policies/sft/samples_T0.jsonl").read_text().splitlines()]
    calls = [c for r in rows for t in r["turns"] for c in t["calls"]]
    assert rows and all(not c["ok"] for c in calls)
    assert all("not allowed" in (c["error"] or "") for c in calls if c["name"] != "<malformed>")
    assert all(r["metadata"]["metrics"]["tool_rounds"] == 0.0 for r in rows)
    assert (run_dir / "policies/sft/config.yaml").is_file()  # the policy's resolved config is kept


def test_passk_cli_reuses_cached_counts(tiny, passk_run) -> None:
    res, run_dir = passk_run
    env = {**os.environ, "COLUMNS": "200"}
    config = run_dir.parent / "empty.yaml"
    config.write_text("{}\n")
    cmd = [sys.executable, "-m", "arlkit", "passk", str(config), *_passk_overrides(tiny, run_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("counts reused") == 2 and "PASS@(k,T)" in out.stdout
    assert json.loads((run_dir / "passk.json").read_text())["counts"] == res["counts"]


def test_passk_without_policies_names_the_field(tmp_path) -> None:
    with pytest.raises(ArlkitError, match=r"passk\.policies"):
        run_passk(load_config(None, [f"train.run_dir={tmp_path}"]), Console(quiet=True))


def test_a_lora_checkpoint_loads_as_its_base_with_adapters_merged(tiny, tmp_path) -> None:
    """A run with model.lora saves adapters only; analyses (and `arlkit eval`) load it as the merged policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from arlkit.models.loading import load_policy

    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny.sft_dir), LoraConfig(r=2, target_modules="all-linear")
    )
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # B = 0 would make the adapters no-ops
    ckpt = tmp_path / "lora_ckpt"
    peft_model.save_pretrained(ckpt)
    tiny.tokenizer.save_pretrained(ckpt)
    assert not (ckpt / "config.json").exists()
    policy = load_policy(ckpt)
    ids = torch.tensor([tiny.tokenizer.encode("Where was Ana born?")])
    with torch.no_grad():
        want = peft_model.eval()(input_ids=ids).logits
        got = policy.model.eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny.sft_dir).eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, base, atol=1e-3)
    assert not any("lora" in n for n, _ in policy.model.named_parameters())


def test_cached_counts_follow_the_checkpoint_files(tmp_path) -> None:
    from arlkit.eval.sampling import checkpoint_fingerprint, load_cached, save_cached

    ckpt = tmp_path / "ckpt"
    (ckpt / "actor").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"1234")
    (ckpt / "actor" / "model.safetensors").write_bytes(b"12")
    (ckpt / "notes.txt").write_text("not a weight file")
    first = checkpoint_fingerprint(str(ckpt))
    assert [f[:2] for f in first] == [["actor/model.safetensors", 2], ["model.safetensors", 4]]
    assert checkpoint_fingerprint("Qwen/Qwen2.5-3B-Instruct") == []  # a hub id has no local files
    settings = {"path": str(ckpt), "fingerprint": first, "n": 4}
    save_cached(tmp_path / "folder", settings, {"correct": {"0": [1, 2]}})
    assert load_cached(tmp_path / "folder", settings) == {"correct": {"0": [1, 2]}}
    (ckpt / "model.safetensors").write_bytes(b"123456")  # saved again: the counts are stale
    assert (
        load_cached(tmp_path / "folder", {**settings, "fingerprint": checkpoint_fingerprint(str(ckpt))})
        is None
    )
    assert load_cached(tmp_path / "folder", {**settings, "n": 8}) is None
    assert load_cached(tmp_path / "nothing", settings) is None
