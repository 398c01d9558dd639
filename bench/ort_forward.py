"""Baseline for the capture figure: onnxruntime plain forward throughput.

python3 bench/ort_forward.py MODEL --batch 8 --threads 2 --images 64
Prints one JSON line: {"images_per_s": ..., "threads": ..., "batch": ...}.
Same inputs as the Rust bench (uniform noise in [0, 1)), same batch, same
number of intra-op threads; the best of `--rounds` timed passes is reported,
after one warm-up batch (the Rust side also runs a warm-up)."""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [a.batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    s.run(None, {inp.name: x})
    batches = -(-a.images // a.batch)
    best = float("inf")
    for _ in range(a.rounds):
        t = time.perf_counter()
        for _ in range(batches):
            s.run(None, {inp.name: x})
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"images_per_s": batches * a.batch / best, "threads": a.threads, "batch": a.batch,
                      "ort": ort.__version__}))


if __name__ == "__main__":
    main()
