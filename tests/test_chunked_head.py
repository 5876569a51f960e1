"""The chunked output head (models/head.py) gives the full-logits path's logprobs, entropies, hidden states and
gradients, padded and packed, with LoRA, DART routes and a temperature, and autograd keeps no full logits."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2ForCausalLM

from arlkit.models.forward import token_logprobs
from arlkit.models.head import chunkable_head
from arlkit.models.packing import packed_token_logprobs
from arlkit.models.routing import TwoAgentModel, apply_dart

LENGTHS = [23, 5, 17, 12, 1, 20]  # 78 real tokens; padded width 23
CHUNK = 7  # divides neither the padded (6 × 22 = 132) nor the packed next-token count
PATHS = {"padded": token_logprobs, "packed": packed_token_logprobs}


@pytest.fixture(scope="module")
def models(tiny) -> dict[str, torch.nn.Module]:
    """The tiny Qwen2 (vocab 600) with weights that vary along the sequence, and a random Llama whose
    vocabulary (16,384) dwarfs its width (32), like a real model's, with tied embeddings."""
    config = copy.deepcopy(tiny.model.config)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(config).eval()
    llama_cfg = LlamaConfig(
        vocab_size=16384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    llama = LlamaForCausalLM(llama_cfg).eval()
    return {"qwen2": qwen, "llama": llama}


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(LENGTHS)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (len(LENGTHS), T), generator=g)
    attn = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        attn[i, :n] = 1
        ids[i, n:] = 0
    return ids, attn


def _variant(model: torch.nn.Module, lora: bool) -> torch.nn.Module:
    m = copy.deepcopy(model).train()
    if lora:  # lora_B starts at 0, so give it values: the adapters must change the outputs being compared
        torch.manual_seed(2)  # the same lora_A in every variant
        m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return m


def _loss_and_grads(fn, model, ids, attn, chunk, routes=None) -> tuple[object, dict[str, torch.Tensor]]:
    """Stats at temperature 0.7 and the gradients of a loss that uses all three outputs (policy term,
    entropy bonus, a value-head-like read of the hidden states), weighted so that every token counts."""
    out = fn(model, ids, attn, 0.7, with_entropy=True, with_hidden=True, routes=routes, chunk=chunk)
    w = torch.linspace(-1, 1, ids.numel()).reshape(ids.shape) * attn
    loss = (out.logprobs * w).sum() + 0.1 * (out.entropies * w).sum() + 0.01 * out.hidden.sum()
    loss.backward()
    return out, {k: p.grad for k, p in model.named_parameters() if p.requires_grad}


def _assert_same(full, chunked, attn, grads_full, grads_chunked) -> None:
    real = attn.bool().clone()
    real[:, 0] = False  # entry 0 has no prediction; padding carries garbage in the padded path
    # a few float32 ulps (values up to ~13): with 2+ threads the head's matmul on a chunk of rows sums in
    # another order than on all rows (measured up to 4.8e-6 on the entropies; 0 with one thread)
    assert torch.allclose(chunked.logprobs[real], full.logprobs[real], atol=1e-5, rtol=0)
    assert torch.allclose(chunked.entropies[real], full.entropies[real], atol=1e-5, rtol=0)
    assert torch.equal(chunked.hidden, full.hidden)
    assert grads_full.keys() == grads_chunked.keys() and grads_full
    for k, g in grads_full.items():
        assert grads_chunked[k] is not None, k
        # float32 rounding relative to the tensor's scale (the tied embedding's reaches ~30 here)
        scale = max(1.0, g.abs().max().item())
        assert (grads_chunked[k] - g).abs().max() <= 1e-5 * scale, k


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_chunked_equals_full_logits(models, arch, path, lora) -> None:
    model = models[arch]
    ids, attn = _batch(model.config.vocab_size)
    m_full, m_chunk = _variant(model, lora), _variant(model, lora)
    assert chunkable_head(m_chunk) is m_chunk.get_output_embeddings()
    full, g_full = _loss_and_grads(PATHS[path], m_full, ids, attn, chunk=None)
    chunked, g_chunk = _loss_and_grads(PATHS[path], m_chunk, ids, attn, chunk=CHUNK)
    _assert_same(full, chunked, attn, g_full, g_chunk)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("path", PATHS)
def test_gradient_checkpointing_changes_no_value_or_gradient(models, path, lora) -> None:
    """model.gradient_checkpointing (the SmolLM2 recipe's memory setting) recomputes each layer in backward:
    the same logprobs, entropies and gradients, packed sequences still kept apart, LoRA adapters still
    trained (their inputs need no grad: non-reentrant checkpointing)."""
    model = models["llama"]
    ids, attn = _batch(model.config.vocab_size)
    plain, ckpt = _variant(model, lora), _variant(model, lora)
    ckpt.gradient_checkpointing_enable()
    want, g_want = _loss_and_grads(PATHS[path], plain, ids, attn, chunk=CHUNK)
    got, g_got = _loss_and_grads(PATHS[path], ckpt, ids, attn, chunk=CHUNK)
    _assert_same(want, got, attn, g_want, g_got)


@pytest.mark.parametrize("path", PATHS)
def test_chunked_equals_full_with_dart_routes(models, path) -> None:
    """DART routes only the decoder's linear layers (the head is shared), so the chunked head applies."""
    ids, attn = _batch(models["qwen2"].config.vocab_size)
    routes = (torch.arange(ids.shape[1]) % 3 == 0).long().expand_as(ids)  # both adapters in every row
    ms = []
    for _ in range(2):
        torch.manual_seed(3)  # the same adapters in both copies
        m = apply_dart(copy.deepcopy(models["qwen2"]), rank=4, alpha=8).train()
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        ms.append(m)
    assert chunkable_head(ms[1]) is not None
    full, g_full = _loss_and_grads(PATHS[path], ms[0], ids, attn, None, routes)
    chunked, g_chunk = _loss_and_grads(PATHS[path], ms[1], ids, attn, CHUNK, routes)
    _assert_same(full, chunked, attn, g_full, g_chunk)


def test_no_logits_are_kept_for_backward(models) -> None:
    """What autograd keeps after the chunked forward holds no (tokens, V) tensor at all (a checkpointed chunk
    keeps only its inputs and recomputes its logits in backward); the full path keeps (R, W-1, V) logits and
    more, which shows the check can see them. The head weight itself, (V, H) or its transpose, is left out."""
    model = _variant(models["llama"], lora=True)
    ids, attn = _batch(model.config.vocab_size)
    V = model.config.vocab_size
    weight = model.get_output_embeddings().weight.untyped_storage().data_ptr()
    vocab_rows: list[int] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.dim() and t.shape[-1] == V and t.untyped_storage().data_ptr() != weight:
            vocab_rows.append(t.numel() // V)
        return t

    for chunk in (None, CHUNK):
        vocab_rows.clear()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            packed_token_logprobs(model, ids, attn, 0.7, with_entropy=True, chunk=chunk)
        if chunk is None:
            assert sum(vocab_rows) >= 2 * (int(attn.sum()) - 1)  # logits, log-softmax, ... of every row
        else:
            assert vocab_rows == []


def test_full_path_where_the_chunked_one_does_not_apply(models) -> None:
    qwen = models["qwen2"]
    # 2-Agent: each position's logits are chosen between two models' heads
    assert chunkable_head(TwoAgentModel(copy.deepcopy(qwen), copy.deepcopy(qwen))) is None
    # LoRA on the head itself: the head is no plain Linear
    lora_head = get_peft_model(copy.deepcopy(qwen), LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    assert chunkable_head(lora_head) is None
    # a post-head soft-cap (Gemma 2's field) changes the logits after the head
    capped = copy.deepcopy(qwen)
    capped.config.final_logit_softcapping = 30.0
    assert chunkable_head(capped) is None
    # and the fallback still computes: same values as asking for the full path
    ids, attn = _batch(qwen.config.vocab_size)
    with torch.no_grad():
        a = token_logprobs(lora_head, ids, attn, with_entropy=True)
        b = token_logprobs(lora_head, ids, attn, with_entropy=True, chunk=None)
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.entropies, b.entropies)
