"Larger cross-checks of popalign.transport: POT at 800 × 1200, streamed vs dense, tiny ε, the OT weight trap, benchmarks."
import subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import ot
from scipy.special import softmax
from scipy.stats import spearmanr

from popalign.core import ConvergenceWarning
from popalign.importance import synthetic_responses, importance_weights
from popalign.transport import persona_weights, transport_plan, cost_matrix, METHODS
from popalign.bench import bench_ot

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def likert():
    X = synthetic_responses(800, d=20, shift=0.3, spread=0.8, seed=1).astype(np.float64)
    Y = synthetic_responses(1200, d=20, seed=2).astype(np.float64)
    return X, Y


def rel(P, Q): return float(np.abs(P - Q).max() / np.abs(Q).max())


def _quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **k)


def test_balanced_matches_pot_sinkhorn_log(likert):
    X, Y = likert
    n, m = len(X), len(Y)
    P64, info = _quiet(transport_plan, X, Y, "balanced", max_iter=250, tol=0)
    Q = _quiet(ot.bregman.sinkhorn_log, np.full(m, 1 / m), np.full(n, 1 / n), ot.dist(X, Y).T, info["eps"],
               numItermax=250, stopThr=0).T
    assert rel(P64, Q) < 1e-10
    # the float32 kernel (dense and streamed) gives the same plan's row sums within 1e-4
    for dm in (1e9, 0):
        w, i32 = _quiet(persona_weights, X, Y, "balanced", max_iter=250, tol=0, dense_mb=dm)
        assert i32["mode"] == ("dense" if dm else "stream")
        assert rel(w, Q.sum(1)) < 1e-4, (dm, rel(w, Q.sum(1)))
    P32, _ = _quiet(transport_plan, X, Y, "balanced", max_iter=250, tol=0, dtype="float32")
    assert rel(P32, Q) < 1e-4


def test_unbalanced_matches_pot(likert):
    X, Y = likert
    X, Y = X[:600], Y[:900]
    n, m = len(X), len(Y)
    P, info = _quiet(transport_plan, X, Y, "unbalanced", tau=0.5, max_iter=200, tol=0)
    Q = _quiet(ot.unbalanced.sinkhorn_unbalanced, np.full(n, 1 / n), np.full(m, 1 / m), ot.dist(X, Y), info["eps"],
               (info["tau"], np.inf), numItermax=200, stopThr=0)
    assert rel(P, Q) < 1e-9
    assert abs(P.sum() - 1) < 1e-9 and np.allclose(P.sum(0), 1 / m)      # human marginal enforced
    w, _ = _quiet(persona_weights, X, Y, "unbalanced", tau=0.5, max_iter=200, tol=0, dense_mb=0)
    assert rel(w, Q.sum(1)) < 1e-4


def test_semi_relaxed_streamed_with_subsampled_shift():
    "n > 4096: the per-human shift comes from 2,048 random personas; weights equal the dense softmax."
    X = synthetic_responses(5000, d=10, shift=0.3, seed=3).astype(np.float64)
    Y = synthetic_responses(700, d=10, seed=4).astype(np.float64)
    iw = np.linspace(0.5, 2, 10)
    w, info = persona_weights(X, Y, item_weights=iw, block=(512, 64))
    C = cost_matrix(X, Y, iw)
    ref = softmax(-C / info["eps"], axis=0).sum(1) / len(Y)
    assert rel(w, ref) < 1e-4 and abs(w.sum() - 1) < 1e-12
    # same result with a single worker (thread-count invariance)
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        w1, _ = persona_weights(X, Y, item_weights=iw, block=(512, 64))
    finally: torch.set_num_threads(nt)
    assert rel(w1, w) < 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dense_mb", [1e9, 0])
def test_tiny_eps_stays_finite(method, dense_mb):
    X = synthetic_responses(4500, d=8, shift=0.5, seed=5); Y = synthetic_responses(300, d=8, seed=6)
    if method != "semi_relaxed": X = X[:400]
    w, info = _quiet(persona_weights, X, Y, method, eps_scale=1e-6, max_iter=10, tau=0.5, dense_mb=dense_mb)
    assert np.isfinite(w).all() and (w >= 0).all() and abs(w.sum() - 1) < 1e-9
    if method == "semi_relaxed": assert info["fallback"] > 0          # the exact path was needed and taken


def test_trap_balanced_weights_are_uniform_semi_relaxed_are_not():
    "DESIGN.md 'OT weight trap' on Likert data: converged balanced weights select nothing."
    X = synthetic_responses(700, d=10, shift=0.4, spread=0.8, seed=7); Y = synthetic_responses(900, d=10, seed=8)
    wb, ib = _quiet(persona_weights, X, Y, "balanced", max_iter=3000, tol=1e-10, dtype="float64")
    assert ib["converged"] and wb.max() / wb.min() - 1 < 1e-6
    _, ii = importance_weights(X, Y)                       # KDE density ratio, an independent estimate
    ws, _ = persona_weights(X, Y, "semi_relaxed")
    wu, _ = _quiet(persona_weights, X, Y, "unbalanced", tau=1.0)
    assert spearmanr(ws, ii["log_weights"]).statistic > 0.5
    assert spearmanr(wu, ii["log_weights"]).statistic > 0.5
    assert wu.max() / wu.min() > 1.3 and ws.max() / ws.min() > 10


def test_batches_split_both_sides():
    X = synthetic_responses(1000, d=10, seed=9); Y = synthetic_responses(2500, d=10, seed=10)
    w, info = _quiet(persona_weights, X, Y, "balanced", batch=1000, max_iter=50)
    assert info["batches"] == 3 and len(info["batch_errors"]) == 3 and abs(w.sum() - 1) < 1e-12
    # each batch is balanced: its personas hold their share of the mass
    assert np.all(np.abs(w * len(X) - 1) < 0.05)


def test_convergence_warning_and_errors(likert):
    X, Y = likert
    with pytest.warns(ConvergenceWarning, match="max_iter=2.*eps_scale"):
        persona_weights(X[:100], Y[:100], "balanced", max_iter=2)
    with pytest.warns(ConvergenceWarning, match="tau"):
        persona_weights(X[:100], Y[:100], "unbalanced", max_iter=2)
    for kw, msg in [(dict(method="emd"), "Unknown method"), (dict(eps_scale=-1), "eps_scale"),
                    (dict(method="unbalanced", tau=0), "tau"), (dict(item_weights=np.ones(3)), "item_weights"),
                    (dict(device="cuda:99" if not torch.cuda.is_available() else "tpu"), "device"),
                    (dict(dtype="float16"), "dtype"), (dict(block=(0, 5)), "block")]:
        with pytest.raises(ValueError, match=msg): persona_weights(X[:50], Y[:50], **kw)
    with pytest.raises(ValueError, match="Y must have 20 columns"): persona_weights(X, Y[:, :5])
    Xn = X.copy(); Xn[5, 5] = np.inf
    with pytest.raises(ValueError, match="X has 1 NaN/inf"): persona_weights(Xn, Y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(likert):
    X, Y = likert
    for method in METHODS:
        wc, _ = _quiet(persona_weights, X, Y, method, max_iter=100, tol=0)
        wg, ig = _quiet(persona_weights, X, Y, method, max_iter=100, tol=0, device="cuda")
        assert ig["device"].startswith("cuda") and rel(wg, wc) < 1e-4


def test_bench_ot_subprocess_prints_and_agrees_with_pot(capsys):
    df = bench_ot(["600x800"], methods=("balanced", "semi_relaxed"), d=20, max_iter=50)
    out = capsys.readouterr().out
    assert out.count("600 × 800") == 2 and "POT" in out and "peak" in out
    assert set(df.method) == {"balanced", "semi_relaxed"}
    assert (df.plan_rel_diff < 1e-4).all() and (df.weight_rel_diff < 1e-4).all() and (df.peak_mb > 50).all()


def test_cli_bench_ot():
    r = subprocess.run([sys.executable, "-m", "popalign.cli", "bench", "ot", "--sizes", "500", "--methods", "semi_relaxed",
                        "--no-pot"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "semi_relaxed" in r.stdout and "500 × 500" in r.stdout
