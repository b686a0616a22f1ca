"""What each of the CPU judge's embedders costs per text, per precision, and the ceiling that puts on the cascade.

On TREC DL 2019's judged hard-negative passages (the first --texts distinct ones, as the judge sees them: 256
tokens at most), one process, one machine, each model loaded and warmed apart from the timing:
  texts/s per embedder (all-MiniLM-L6-v2, SPLADE-tiny, EmbeddingGemma-300M) in float32, bfloat16 (where the CPU
  computes it natively) and int8 (PyTorch dynamic quantization), with the cosine of each vector to float32's;
  SPLADE-tiny's encoder alone (its vocabulary-wide output head is most of its cost);
  all-MiniLM-L6-v2 through ONNX Runtime in float32 and int8 (dynamic quantization), when `onnxruntime` and `onnx`
  are installed (they are not a dependency: `pip install onnxruntime onnx`).
Then the ceiling: a pair costs (in seconds per distinct text) MiniLM + SPLADE-tiny on every text and
EmbeddingGemma on the share the cheap judge passes on; the shipped judge is all three in float32. The table gives
the cascade's speed-up over the shipped judge at passed-on shares of 0% to 40%: the most any cascade of these
models can reach on this machine, whatever its thresholds.

    .venv/bin/python bench/encoder_cost.py [--texts 400]    # needs ../shared/data; ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = ("all-MiniLM-L6-v2", "splade-tiny", "embeddinggemma-300m")
SHARES = (0.0, 0.1, 0.25, 0.32, 0.4)


def texts(n: int) -> list[str]:
    from judge_features import judged

    triples, _ = judged("dl19")
    return list(dict.fromkeys(x for t in triples for x in (t.positive, t.negative)))[:n]


def encode(model, docs: list[str], sparse: bool) -> np.ndarray:
    from arhn_pipeline import embeddings

    if sparse:
        rows = embeddings._encode_sparse(model, docs, query=False)
        dense = np.vstack([r.toarray() for r in rows]).astype(np.float32)
        return dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-9)
    return embeddings._encode_dense(model, docs, query=False)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def torch_rows(docs: list[str], precisions: list[str]) -> tuple[list[list], dict[tuple[str, str], float]]:
    from arhn_pipeline import embeddings

    rows, cost = [], {}
    reference: dict[str, np.ndarray] = {}
    for precision in precisions:
        os.environ["ARHN_EMBED_DTYPE"] = precision
        for name in MODELS:
            model = embeddings.load(name)
            model.max_seq_length = 256  # as the trained judge sets it
            sparse = embeddings.is_sparse(name)
            encode(model, docs[:8], sparse)  # warm up
            seconds, vecs = timed(lambda m=model, s=sparse: encode(m, docs, s))
            reference.setdefault(name, vecs)  # float32 comes first
            cos = (vecs * reference[name]).sum(1)
            cost[name, precision] = seconds / len(docs)
            rows.append([name, f"torch {precision}", f"{len(docs) / seconds:.1f}", f"{cos.min():.4f}",
                         f"{cos.mean():.4f}"])  # fmt: skip
            print("  ".join(rows[-1]), flush=True)
            if sparse:
                seconds = encoder_only(model, docs)
                rows.append([name, f"torch {precision}, encoder only (no output head)",
                             f"{len(docs) / seconds:.1f}", "", ""])  # fmt: skip
                print("  ".join(rows[-1]), flush=True)
    return rows, cost


def encoder_only(model, docs: list[str]) -> float:
    """SPLADE-tiny's BERT layers alone: what its 30,522-wide output head and pooling leave."""
    import torch

    mlm = model[0].auto_model
    tok = model.tokenizer
    order = sorted(docs, key=len)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for start in range(0, len(order), 32):
            batch = tok(order[start : start + 32], return_tensors="pt", padding=True, truncation=True, max_length=256)
            mlm.bert(**batch)
        return time.perf_counter() - t0


def onnx_rows(docs: list[str], reference: np.ndarray) -> list[list]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("ONNX Runtime rows skipped: onnxruntime / onnx not installed (pip install onnxruntime onnx)")
        return []
    import torch

    from arhn_pipeline import embeddings

    os.environ["ARHN_EMBED_DTYPE"] = "float32"
    st = embeddings.load("all-MiniLM-L6-v2")
    bert, tok = st[0].auto_model.eval(), st.tokenizer

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask, types):
            return self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    folder = Path(tempfile.mkdtemp(prefix="arhn-onnx-"))
    sample = tok(["a b", "c"], return_tensors="pt", padding=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Hidden(bert), tuple(sample[k] for k in names), folder / "fp32.onnx", input_names=names,
                      output_names=["hidden"], dynamic_axes={k: {0: "b", 1: "s"} for k in [*names, "hidden"]},
                      opset_version=17, dynamo=False)  # fmt: skip
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    rows = []
    for label in ("fp32", "int8"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(folder / f"{label}.onnx"), options, providers=["CPUExecutionProvider"])

        def run(session=session):
            out = np.zeros((len(docs), reference.shape[1]), np.float32)
            order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
            for start in range(0, len(order), 32):
                idx = order[start : start + 32]
                batch = tok([docs[i] for i in idx], return_tensors="np", padding=True, truncation=True, max_length=256)
                hidden = session.run(None, {k: batch[k].astype(np.int64) for k in names})[0]
                mask = batch["attention_mask"][..., None]
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
            return out

        run()  # warm up
        seconds, vecs = timed(run)
        cos = (vecs * reference).sum(1)
        rows.append(["all-MiniLM-L6-v2", f"ONNX Runtime {label}", f"{len(docs) / seconds:.1f}", f"{cos.min():.4f}",
                     f"{cos.mean():.4f}"])  # fmt: skip
        print("  ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    from arhn_pipeline import embeddings
    from arhn_pipeline.engine.vllm_engine import choose_dtype, cpu_flags
    from arhn_pipeline.markdown import text_table as table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=400)
    args = parser.parse_args()
    os.environ["ARHN_EMBEDDINGS_STORE"] = "0"  # every text encoded here, none read back
    docs = texts(args.texts)
    native = choose_dtype("auto", False, cpu_flags())[0]
    precisions = ["float32", "int8"] + (["bfloat16"] if native == "bfloat16" else [])
    rows, cost = torch_rows(docs, precisions)
    os.environ["ARHN_EMBED_DTYPE"] = "float32"
    rows += onnx_rows(docs, encode(embeddings.load("all-MiniLM-L6-v2"), docs, False))
    print(f"\n{len(docs)} distinct TREC DL 2019 passages, 256 tokens at most, batches of 32 (SPLADE-tiny: 8):")
    print("\n".join(table(["embedder", "backend and precision", "texts/s", "cosine to float32 (min)", "(mean)"], rows)))

    shipped = sum(cost[name, "float32"] for name in MODELS)
    print(f"\nthe shipped judge (all three, float32): {1 / shipped:.1f} texts/s. A cascade over the same models, "
          "x the shipped judge's speed, by the share the cheap judge passes on to EmbeddingGemma:")  # fmt: skip
    ceiling = []
    for precision in precisions:
        cheap = cost["all-MiniLM-L6-v2", precision] + cost["splade-tiny", precision]
        whole = cost["embeddinggemma-300m", precision]
        ceiling.append([precision] + [f"{shipped / (cheap + share * whole):.1f}x" for share in SHARES])
    print("\n".join(table(["precision"] + [f"{share:.0%} passed on" for share in SHARES], ceiling)))


if __name__ == "__main__":
    main()
