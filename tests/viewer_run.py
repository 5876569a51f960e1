"""A small run folder for the viewer tests, written by the real RunDir from real trajectories.

- `samples.jsonl` step 1: a group of 4 sampled rollouts of the briefly SFT'd tiny model (entropies from
  the generator), then a group of scripted right and wrong episodes made into a branch tree the way APPO
  fills `parent`/`branch_pos` (a branch re-generates from a prefix of its parent); advantages from the
  registered GRPO estimator over both groups.
- `eval_base.jsonl`: scripted demonstrations, one per strategy, with a hostile tool output in one of them.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import AutoModelForCausalLM

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from arlkit.models.tiny import demo_trajectory, scripted_trajectory
from arlkit.rollout.engine import RolloutParams, rollout
from arlkit.rollout.generator import HFGenerator
from arlkit.train.run_dir import RunDir
from arlkit.trajectory import Trajectory, collate

XSS = "<script>alert('xss')</script><img src=x onerror=alert(1)>"


def branch(parent: Trajectory, parent_index: int, child: Trajectory) -> Trajectory:
    """`child` as a branch of `parent` at the first token where their ids differ (APPO re-generates from a
    prefix c_≤t of the parent; here two demonstrations of one question share the prompt)."""
    t = next(
        (i for i, (a, b) in enumerate(zip(parent.token_ids, child.token_ids, strict=False)) if a != b),
        min(len(parent), len(child)),
    )
    out = copy.deepcopy(child)
    out.parent, out.branch_pos = parent_index, t - 1  # the last shared token
    return out


def write_viewer_run(tiny, run_path: Path) -> Path:
    task, tok = tiny.task, tiny.tokenizer
    rows = task.rows("train", 40, seed=11)
    two_hop = next(r for r in rows if len(r["hops"]) >= 2)
    model = AutoModelForCausalLM.from_pretrained(tiny.sft_dir).eval()
    params = RolloutParams(max_turns=task.max_turns, max_new_tokens=24, max_length=400, temperature=1.0)
    gen = HFGenerator(model, tok.pad_token_id, seed=5)
    sampled = rollout(gen, tok, task.make_env, [rows[0]] * 4, [0] * 4, params)

    # group 1: a 2-hop question; right and wrong scripted answers so that GRPO advantages differ in sign
    wrong = "I know this.<answer> Nobody</answer>"
    first_call = task.demo_actions(two_hop, "first_hop")[0]
    root = scripted_trajectory(task, tok, two_hop, task.demo_actions(two_hop, "all_hops"))
    first = scripted_trajectory(task, tok, two_hop, task.demo_actions(two_hop, "first_hop"))
    guess = scripted_trajectory(task, tok, two_hop, [wrong])
    first_wrong = scripted_trajectory(task, tok, two_hop, [first_call, wrong])
    # indices in the written batch: 4 sampled rollouts, then root=4, its branches 5 and 6, 5's branch 7,
    # and 8, a branch of #99, which is not in the samples (samples are a prefix of the batch)
    tree = [root, branch(root, 4, first), branch(root, 4, guess), branch(first, 5, first_wrong)]
    orphan = copy.deepcopy(guess)
    orphan.parent, orphan.branch_pos = 99, 10
    trajs = [*sampled, *tree, orphan]
    for t in trajs[4:]:
        t.group_id = 1
    batch = collate(trajs, tok.pad_token_id)
    inputs = AdvantageInputs(batch.token_rewards, batch.loss_mask, batch.group_index)
    adv = ADVANTAGES.get("grpo")(inputs, AdvantageParams())

    run = RunDir(run_path, tensorboard=False)
    run.write_config(
        {"model": {"path": str(tiny.sft_dir)}, "algo": {"advantage": "grpo"}, "train": {"steps": 1}}
    )
    run.write_samples(1, trajs, tok, advantages=adv.advantages)

    evals = [demo_trajectory(task, tok, rows[2], s) for s in ("all_hops", "first_hop", "none")]
    hostile = evals[1]
    rec = hostile.turns[0]
    call = rec.calls[0]
    bad_call = type(call)(call.name, {"query": XSS}, False, 0.01, XSS)  # a tool output is untrusted text
    hostile.turns[0] = type(rec)(rec.start, rec.end, (bad_call,), rec.reward, rec.finish_reason)
    hostile.metadata["question"] = XSS
    run.write_samples(0, evals, tok, name="eval_base")
    run.close()
    return run_path
