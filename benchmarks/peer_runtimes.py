"""The peers of benchmarks/peers.py, run in the peers' own environment (benchmarks/.peers-venv: OpenVINO, NNCF,
ONNX Runtime, CTranslate2 from PyPI; torch and transformers read from the product's venv).

    benchmarks/.peers-venv/bin/python benchmarks/peer_runtimes.py PEER MODEL_DIR IDS.npz OUT.npz THREADS WORK_DIR

Every peer gets the same token ids (IDS.npz: ``passages`` and ``queries`` as ragged arrays, written by peers.py),
runs them the way its users do (batches of 32 length-sorted texts, padded, attention mask; single queries one
at a time), pools the last hidden state over the mask in numpy and L2-normalises. OUT.npz holds the vectors
and the timings. A peer that cannot run here exits 3 with its reason on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCH = 32
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]  # ids [B, L] int64, mask [B, L] int64 -> hidden [B, L, d]


def padded(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), length), dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return ids, mask


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[:, :, None].astype(np.float32)
    mean = (hidden.astype(np.float32) * m).sum(axis=1) / m.sum(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def run(forward: Forward, passages: list[np.ndarray], queries: list[np.ndarray], rounds: int = 2) -> dict:
    order = sorted(range(len(passages)), key=lambda i: -len(passages[i]))
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    out = np.zeros((len(passages), 0), dtype=np.float32)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        rows = {}
        for b in batches:
            ids, mask = padded([passages[i] for i in b])
            for i, v in zip(b, pooled(forward(ids, mask), mask), strict=True):
                rows[i] = v
        best = min(best, time.perf_counter() - t)
        out = np.stack([rows[i] for i in range(len(passages))])
    forward(*padded(queries[:1]))  # warm-up
    latencies, qrows = [], []
    for q in queries:
        ids, mask = padded([q])
        t = time.perf_counter()
        qrows.append(pooled(forward(ids, mask), mask)[0])
        latencies.append(time.perf_counter() - t)
    tokens = sum(len(s) for s in passages)
    return {"passages": out, "queries": np.stack(qrows), "tokens_per_s": tokens / best,
            "latencies": np.array(latencies)}


def export_onnx(model_dir: Path, path: Path) -> None:
    import torch
    from transformers import BertModel

    class Hidden(torch.nn.Module):  # keyword arguments only: BertModel's positional order varies by version
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(model_dir)).eval().requires_grad_(False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    torch.onnx.export(Hidden(), (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "l"}, "attention_mask": {0: "b", 1: "l"},
                                    "last_hidden_state": {0: "b", 1: "l"}})


def ort_forward(path: Path, threads: int) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        return session.run(None, feed)[0]
    return forward


def peer(name: str, model_dir: Path, threads: int, work: Path, calibration: list[np.ndarray]) -> Forward:
    fp32_onnx = work / "model.onnx"
    if name.startswith(("onnxruntime", "openvino")) and not fp32_onnx.exists():
        export_onnx(model_dir, fp32_onnx)
    if name == "onnxruntime-fp32":
        return ort_forward(fp32_onnx, threads)
    if name == "onnxruntime-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = work / "model.int8.onnx"
        quantize_dynamic(str(fp32_onnx), str(int8), per_channel=True, weight_type=QuantType.QInt8)
        return ort_forward(int8, threads)
    if name.startswith("openvino"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(fp32_onnx))
        hint = {"openvino-fp32": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}[name]
        if name == "openvino-bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeError("this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lack BF16)")
        if name == "openvino-int8":
            import nncf

            items = [dict(zip(("input_ids", "attention_mask"), padded([s]), strict=True)) for s in calibration]
            model = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(items))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": hint})
        request = compiled.create_infer_request()
        inputs = {p.get_any_name() for p in compiled.inputs}

        def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            return request.infer(feed)[compiled.outputs[0]]
        return forward
    if name == "ctranslate2-int8":
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        out = work / "ct2-int8"
        if not out.exists():
            TransformersConverter(str(model_dir)).convert(str(out), quantization="int8")
        encoder = ctranslate2.Encoder(str(out), device="cpu", compute_type="int8", intra_threads=threads)

        def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            seqs = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]
            hidden = np.array(encoder.forward_batch(seqs).last_hidden_state)  # [B, L, d]
            return hidden
        return forward
    raise ValueError(f"unknown peer {name!r}")


def main() -> int:
    name, model_dir, ids_file, out_file, threads, work = sys.argv[1:7]
    data = np.load(ids_file, allow_pickle=True)
    passages, queries = list(data["passages"]), list(data["queries"])
    try:
        import torch

        torch.set_num_threads(int(threads))
        forward = peer(name, Path(model_dir), int(threads), Path(work), passages[:32])
    except Exception as exc:  # noqa: BLE001 - any peer failure is reported as its reason, not a crash
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    result = run(forward, passages, queries)
    np.savez(out_file, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
