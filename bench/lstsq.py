"""Baseline for the fit figures: what the paper's code does, numpy.linalg.lstsq
on the raw tokens, and numpy's solve of the normal equations from f64
statistics (the baseline of rba's fit from statistics alone).

python3 bench/lstsq.py TOKENS.f32 N D
The file holds X then Y, each N x D row-major float32 (written by the Rust
bench, so both sides fit the same tokens). Prints one JSON line with the best
of 3 timings in seconds and the relative residual ||XT - Y||^2 / ||Y - mean||^2."""

import json
import sys
import time

import numpy as np


def best(f, reps=3):
    t_best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def main():
    path, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    raw = np.fromfile(path, dtype=np.float32)
    x, y = raw[: n * d].reshape(n, d), raw[n * d :].reshape(n, d)
    t_lstsq, (t, *_rest) = best(lambda: np.linalg.lstsq(x, y, rcond=None))
    r = x @ t - y
    rel = float((r * r).sum() / ((y - y.mean(0)) ** 2).sum())
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    g, c = x64.T @ x64, x64.T @ y64
    t_solve, _ = best(lambda: np.linalg.solve(g, c))
    print(json.dumps({"lstsq_s": t_lstsq, "solve_s": t_solve, "relative_residual": rel}))


if __name__ == "__main__":
    main()
