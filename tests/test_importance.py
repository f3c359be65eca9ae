"Larger cross-checks of popalign.importance: dense SciPy reference at 50 items, the exact fallback, subsampling, benchmarks."
import subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.spatial.distance import cdist

from popalign.importance import (importance_weights, kde_log_density, select_top, synthetic_responses,
                                 subsample_error, scale_responses)
from popalign.bench import bench_kde

ROOT = Path(__file__).resolve().parent.parent


def dense_logw(X, Y, h, lo, sc):
    Xs, Ys = (X - lo) / sc, (Y - lo) / sc
    lse = lambda A, B: np.concatenate([logsumexp(-cdist(A[i:i+500], B, "sqeuclidean") / (2 * h * h), 1)
                                       for i in range(0, len(A), 500)])
    return lse(Xs, Ys) - np.log(len(Y)) - lse(Xs, Xs) + np.log(len(X))


def centered(v): return v - v.mean()


@pytest.fixture(scope="module")
def likert():
    X = synthetic_responses(3000, shift=0.3, spread=0.8, seed=1).astype(np.float64)
    Y = synthetic_responses(5000, seed=2).astype(np.float64)
    return X, Y


def test_matches_dense_reference_50_items(likert):
    X, Y = likert
    w, info = importance_weights(X, Y, standardize=(1, 5))
    ref = dense_logw(X, Y, 0.2, 1.0, 4.0)
    assert np.abs(centered(info["log_weights"]) - centered(ref)).max() < 2e-3
    assert abs(w.sum() - 1) < 1e-12 and info["m_used"] == 5000
    w64, i64 = importance_weights(X, Y, standardize=(1, 5), dtype="float64", block=(700, 900))
    assert np.abs(centered(i64["log_weights"]) - centered(ref)).max() < 1e-8
    # the top-70 % set is the same as the reference's (up to near-ties)
    a, b = set(select_top(w, 0.7)), set(select_top(np.exp(ref - ref.max()), 0.7))
    assert len(a & b) / len(b) > 0.999


def test_exact_fallback_rows():
    "Pool points that duplicate humans missing from the 2,048-human shift sample overflow the fast path → exact rows."
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(9000, 5))
    X = np.r_[Y[:300] + 1e-4 * rng.normal(size=(300, 5)), rng.normal(size=(300, 5))]
    ld = kde_log_density(X, Y, bandwidth=0.05)
    ref = logsumexp(-cdist(X, Y, "sqeuclidean") / (2 * 0.05**2), 1) - np.log(9000) - 2.5 * np.log(2 * np.pi * 0.05**2)
    assert np.abs(ld - ref).max() < 1e-3
    _, info = importance_weights(X, Y, bandwidth=0.05, standardize="none")
    assert info["fallback_rows"] > 0 and np.isfinite(info["log_weights"]).all()


def test_thread_count_invariance(likert):
    X, Y = likert
    w2, _ = importance_weights(X[:1000], Y[:2000])
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        w1, _ = importance_weights(X[:1000], Y[:2000])
    finally: torch.set_num_threads(nt)
    assert np.abs(w1 - w2).max() < 1e-6 * w2.max()
    assert torch.get_num_threads() == nt                  # the worker pool restores torch's setting


def test_y_subsample_is_seeded_and_measured(likert):
    X, Y = likert
    a, ia = importance_weights(X[:500], Y, y_subsample=1000, seed=3)
    b, _ = importance_weights(X[:500], Y, y_subsample=1000, seed=3)
    assert np.array_equal(a, b) and ia["m_used"] == 1000 and ia["m"] == 5000
    df = subsample_error(X[:800], Y, sizes=(250, 2500), reps=2)
    g = df.groupby("k").mean()
    assert g.loc[2500, "spearman"] > g.loc[250, "spearman"] and g.loc[2500, "top_overlap"] > g.loc[250, "top_overlap"]


def test_standardizations_and_errors(likert):
    X, Y = likert
    lo, sc = scale_responses(X, Y, "zscore")
    assert np.allclose(sc, Y.std(0)) and np.allclose(lo, Y.mean(0))
    wz, _ = importance_weights(X[:300], Y[:600], standardize="zscore", bandwidth=1.0)
    assert np.isfinite(wz).all()
    for kw, msg in [(dict(bandwidth=0), "bandwidth"), (dict(bandwidth=np.nan), "bandwidth"),
                    (dict(standardize="robust"), "standardize"), (dict(y_subsample=-5), "y_subsample"),
                    (dict(dtype="int8"), "dtype")]:
        with pytest.raises(ValueError, match=msg): importance_weights(X[:50], Y[:50], **kw)
    with pytest.raises(ValueError, match="Y must have 50 columns"): importance_weights(X, Y[:, :10])


def test_select_top_order_and_ties():
    rng = np.random.default_rng(1)
    w = rng.integers(0, 5, 1000).astype(float)
    idx = select_top(w, 0.7)
    assert len(idx) == 700 and len(set(idx)) == 700
    assert np.all(np.diff(w[idx]) <= 0)
    for v in np.unique(w[idx]):                           # within a tie: ascending index
        t = idx[w[idx] == v]; assert np.all(np.diff(t) > 0)
    assert np.array_equal(idx, np.argsort(-w, kind="stable")[:700])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(likert):
    X, Y = likert
    wc, ic = importance_weights(X, Y)
    wg, ig = importance_weights(X, Y, device="cuda")
    assert np.abs(centered(ig["log_weights"]) - centered(ic["log_weights"])).max() < 1e-3


def test_bench_kde_subprocess(capsys):
    df = bench_kde(["1500x2500"])
    out = capsys.readouterr().out
    assert "kde  1500 × 2500" in out and "scipy" in out
    r = df.iloc[0]
    assert r.n == 1500 and r.m == 2500 and r.peak_mb > r.base_mb > 0 and r.max_abs_diff < 2e-3


def test_cli_bench_kde():
    r = subprocess.run([sys.executable, "-m", "popalign.cli", "bench", "kde", "--sizes", "800x1200"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "kde" in r.stdout and "peak" in r.stdout
