"""A local Hugging Face chat model as an LLM judge (envs/judge.py): greedy replies, loaded once, on CPU unless
told otherwise. For a judge larger than the policy, serve it (vLLM, an API) and pass that chat function."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from arlkit.models.loading import load_tokenizer


def hf_judge(path: str, max_new_tokens: int = 8, device: str = "cpu") -> Callable[[list[dict]], str]:
    """A chat function over the model at `path` (a folder or Hugging Face id): the decoded greedy reply."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, field="judge")
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    # the envs of a batch step at once (rollout/engine.py advance_all): one model, one reply at a time
    lock = threading.Lock()

    @torch.no_grad()
    def chat(messages: list[dict]) -> str:
        with lock:
            return _reply(messages)

    def _reply(messages: list[dict]) -> str:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        out = model.generate(
            ids.to(device),
            attention_mask=torch.ones_like(ids).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    return chat
