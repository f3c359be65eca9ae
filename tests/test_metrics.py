"Larger cross-checks of popalign.metrics against independent implementations (scipy, POT, closed forms, dense MMD)."
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.stats
from scipy.spatial.distance import cdist, jensenshannon

import ot
from popalign.core import find_data, has_data
from popalign.metrics import (METRICS, amw, bootstrap_ci, compare_table, evaluate, frechet, js, ks, mae_corr,
                              mean_diff, median_bandwidth, mmd, noise_floor, random_projections, sliced_wasserstein,
                              _floor_splits)

BIG5 = "openpsychometrics/BIG5/data.csv"


def likert_means(rng, n, d, shift=0.0):
    "Trait-score-like data: means of 10 Likert items (a 0.1 grid on [1, 5], many ties)."
    return np.clip(np.round(rng.normal(3 + shift, 0.7, size=(n, d)) * 10) / 10, 1, 5)


def big5_scores():
    df = pd.read_csv(find_data(BIG5), sep="\t")
    items = [f"{t}{i}" for t in "ENACO" for i in range(1, 11)]
    R = df[items].apply(pd.to_numeric, errors="coerce")
    R = R.where(R.isin([1, 2, 3, 4, 5])).dropna()
    rev = "E2 E4 E6 E8 E10 N2 N4 A1 A3 A5 A7 C2 C4 C6 C8 O2 O4 O6".split()
    R[rev] = 6 - R[rev]
    return pd.DataFrame({t: R[[f"{t}{i}" for i in range(1, 11)]].mean(axis=1) for t in "ENACO"})


def dense_mmd(A, B, s, unbiased=False):
    K = lambda U, V: np.exp(-cdist(U, V, "sqeuclidean") / (2 * s * s))
    n, m = len(A), len(B)
    kx, ky, kxy = K(A, A).sum(), K(B, B).sum(), K(A, B).sum()
    if unbiased: return (kx - n) / (n * (n - 1)) + (ky - m) / (m * (m - 1)) - 2 * kxy / (n * m)
    return kx / n**2 + ky / m**2 - 2 * kxy / (n * m)


# ---------------------------------------------------------------- marginal metrics

@pytest.mark.parametrize("n,m", [(3000, 7001), (2500, 2500), (1, 400)])
def test_amw_matches_scipy(n, m):
    rng = np.random.default_rng(n + m)
    X, Y = likert_means(rng, n, 5), likert_means(rng, m, 5, shift=0.2)
    ref = [scipy.stats.wasserstein_distance(X[:, j], Y[:, j]) for j in range(5)]
    np.testing.assert_allclose(amw(X, Y, per_trait=True), ref, rtol=1e-11, atol=1e-13)
    assert amw(X, Y) == pytest.approx(np.mean(ref), rel=1e-11)


def test_shift_gives_shift():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 4))
    c = np.array([0.3, -1.2, 0.0, 2.5])
    assert amw(X, X + c) == pytest.approx(np.abs(c).mean(), rel=1e-12)
    assert mean_diff(X, X + c) == pytest.approx(np.abs(c).mean(), rel=1e-12)
    assert frechet(X, X + c) == pytest.approx((c**2).sum(), rel=1e-9)
    x1 = X[:, :1]
    for p in (1, 2):
        assert sliced_wasserstein(x1, x1 + 0.8, p=p, n_proj=10) == pytest.approx(0.8, rel=1e-12)
    assert ks(x1, x1 + 100) == 1.0
    assert js(x1, x1 + 100) == pytest.approx(1.0)


def test_ks_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    X, Y = likert_means(rng, 3000, 5), likert_means(rng, 4500, 5, shift=0.05)
    ref = [scipy.stats.ks_2samp(X[:, j], Y[:, j]).statistic for j in range(5)]
    np.testing.assert_allclose(ks(X, Y, per_trait=True), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bins", [5, 20, 41])
def test_js_matches_scipy(bins):
    rng = np.random.default_rng(bins)
    X, Y = likert_means(rng, 2000, 3), likert_means(rng, 3000, 3, shift=0.3)
    ref = []
    for j in range(3):
        lo, hi = min(X[:, j].min(), Y[:, j].min()), max(X[:, j].max(), Y[:, j].max())
        p = np.histogram(X[:, j], bins, (lo, hi))[0]; q = np.histogram(Y[:, j], bins, (lo, hi))[0]
        ref.append(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)
    np.testing.assert_allclose(js(X, Y, bins=bins, per_trait=True), ref, rtol=1e-10, atol=1e-14)
    assert 0 <= js(X, Y, bins=bins) <= 1
    # a fixed range (the instrument's scale) is honoured
    p = np.histogram(X[:, 0], bins, (1, 5))[0]; q = np.histogram(Y[:, 0], bins, (1, 5))[0]
    assert js(X[:, :1], Y[:, :1], bins=bins, range=(1, 5)) == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def test_mae_corr_matches_pandas():
    rng = np.random.default_rng(2)
    C = np.array([[1, .4, -.2], [.4, 1, .1], [-.2, .1, 1]])
    X = pd.DataFrame(rng.multivariate_normal(np.zeros(3), C, 5000), columns=list("ENA"))
    Y = pd.DataFrame(rng.normal(size=(3000, 3)), columns=list("ENA"))
    cx, cy = X.corr().to_numpy(), Y.corr().to_numpy()
    iu = np.triu_indices(3, 1)
    assert mae_corr(X, Y) == pytest.approx(np.abs(cx[iu] - cy[iu]).mean(), rel=1e-12)
    assert mae_corr(X, Y) == pytest.approx(np.abs(C[iu]).mean(), abs=0.05)


# ---------------------------------------------------------------- Fréchet

def test_frechet_matches_sqrtm_fid():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(800, 6)) @ rng.normal(size=(6, 6))
    Y = rng.normal(size=(600, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mx, my, Sx, Sy = X.mean(0), Y.mean(0), np.cov(X, rowvar=False), np.cov(Y, rowvar=False)
    ref = ((mx - my) ** 2).sum() + np.trace(Sx + Sy - 2 * scipy.linalg.sqrtm(Sx @ Sy).real)
    assert frechet(X, Y) == pytest.approx(ref, rel=1e-8)


def test_frechet_closed_form_gaussians():
    "Large samples from two Gaussians with non-commuting covariances approach the population FD."
    rng = np.random.default_rng(4)
    L1, L2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    S1, S2 = L1 @ L1.T + 0.1 * np.eye(3), L2 @ L2.T + 0.1 * np.eye(3)
    m1, m2 = np.zeros(3), np.array([1.0, -0.5, 0.25])
    r1 = scipy.linalg.sqrtm(S1).real
    true = ((m1 - m2) ** 2).sum() + np.trace(S1 + S2 - 2 * scipy.linalg.sqrtm(r1 @ S2 @ r1).real)
    X, Y = rng.multivariate_normal(m1, S1, 200_000), rng.multivariate_normal(m2, S2, 200_000)
    assert frechet(X, Y) == pytest.approx(true, rel=0.02)
    # 1-D: (Δμ)² + (Δσ)²
    x, y = rng.normal(1, 2, 300_000), rng.normal(-1, 0.5, 300_000)
    assert frechet(x, y) == pytest.approx(4 + 1.5**2, rel=0.01)


# ---------------------------------------------------------------- sliced Wasserstein

@pytest.mark.parametrize("p", [1, 2])
def test_sw_matches_pot_same_projections(p):
    rng = np.random.default_rng(5)
    X, Y = likert_means(rng, 2000, 5), likert_means(rng, 3001, 5, shift=0.1)
    P = random_projections(5, 300, seed=9)
    ref = ot.sliced_wasserstein_distance(X, Y, projections=P, p=p)
    assert sliced_wasserstein(X, Y, projections=P, p=p) == pytest.approx(ref, rel=1e-10)


def test_sw_close_to_pot_random_projections():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(1500, 5)), rng.normal(size=(1500, 5)) @ np.diag([1, 1.5, 1, 1, .5]) + 0.3
    ours = sliced_wasserstein(X, Y, n_proj=3000, seed=0)
    pots = ot.sliced_wasserstein_distance(X, Y, n_projections=3000, seed=np.random.RandomState(1))
    assert ours == pytest.approx(pots, rel=0.03)


def test_sw_seeded():
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    assert sliced_wasserstein(X, Y, seed=1) == sliced_wasserstein(X, Y, seed=1)
    assert sliced_wasserstein(X, Y, seed=1) != sliced_wasserstein(X, Y, seed=2)
    assert sliced_wasserstein(X, X) == 0.0


# ---------------------------------------------------------------- MMD

@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_blocked_matches_dense(unbiased):
    rng = np.random.default_rng(8)
    X, Y = likert_means(rng, 1500, 5), likert_means(rng, 1201, 5, shift=0.1)
    s = median_bandwidth(X, Y, seed=0)
    ref = dense_mmd(X, Y, s, unbiased)
    assert mmd(X, Y, unbiased=unbiased, block=256, dtype=np.float64) == pytest.approx(ref, rel=1e-10)
    assert mmd(X, Y, unbiased=unbiased, block=300) == pytest.approx(ref, rel=1e-4)     # float32 blocks
    assert mmd(X, Y, bandwidth=0.5, unbiased=unbiased, dtype=np.float64) == pytest.approx(dense_mmd(X, Y, 0.5, unbiased), rel=1e-10)


def test_mmd_outliers_use_direct_path():
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(300, 3)), rng.normal(size=(250, 3))
    X[0] = 1e3   # γ·|x|² far above the factorisation's safe range
    ref = dense_mmd(X, Y, 1.0)   # X-X and X-Y blocks take the direct float64 path, Y-Y the factorised one
    assert mmd(X, Y, bandwidth=1.0, block=64, dtype=np.float64) == pytest.approx(ref, rel=1e-10)
    assert mmd(X, Y, bandwidth=1.0, block=64) == pytest.approx(ref, rel=1e-5)


def test_median_bandwidth():
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(300, 3)), rng.normal(size=(200, 3))
    from scipy.spatial.distance import pdist
    assert median_bandwidth(X, Y) == pytest.approx(np.median(pdist(np.vstack([X, Y]))))
    X, Y = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3))
    a, b = median_bandwidth(X, Y, seed=0), median_bandwidth(X, Y, seed=0)
    assert a == b and a != median_bandwidth(X, Y, seed=1)
    assert a == pytest.approx(np.sqrt(2 * scipy.stats.chi2.median(3)), rel=0.03)   # |x - y|² ~ 2·χ²(3)


def test_mmd_20k_without_dense_memory():
    "n = m = 20 000: the dense kernel matrices would take 3 × 3.2 GB; the blocked sums stay small."
    rng = np.random.default_rng(11)
    X, Y = likert_means(rng, 20_000, 5), likert_means(rng, 20_000, 5, shift=0.05)
    tracemalloc.start()
    v = mmd(X, Y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"
    # MMD² of two samples of one distribution ≈ its bias ≈ (2 - 2·E k(x, x')) / n; the shifted pair is above it
    same = mmd(X[:10_000], X[10_000:])
    assert 0 < same < v


# ---------------------------------------------------------------- evaluate

def test_evaluate_keys_types_and_errors():
    rng = np.random.default_rng(12)
    cols = list("ENACO")
    X = pd.DataFrame(likert_means(rng, 500, 5), columns=cols)
    Y = pd.DataFrame(likert_means(rng, 700, 5), columns=cols)
    r = evaluate(X, Y)
    assert list(r) == ["AMW", "FD", "SW", "MMD", "MAE_corr", "KS", "JS", "MeanDiff"] == list(METRICS)
    assert all(isinstance(v, float) for v in r.values())
    assert r == evaluate(X.to_numpy(), Y.to_numpy())
    assert r == evaluate(X, Y, seed=0)
    assert r["SW"] != evaluate(X, Y, seed=1)["SW"]
    assert list(evaluate(X, Y, metrics=["MeanDiff", "AMW"])) == ["AMW", "MeanDiff"]
    z = evaluate(X, X)
    assert all(abs(v) < 1e-7 for v in z.values()), z
    with pytest.raises(ValueError, match=r"X \(500, 5\) and Y \(700, 4\)"): evaluate(X, Y.iloc[:, :4])
    with pytest.raises(ValueError, match="same columns in the same order"): evaluate(X, Y[cols[::-1]])
    Y2 = Y.copy(); Y2.iloc[5, 1] = np.nan
    with pytest.raises(ValueError, match="Y has 1 NaN"): evaluate(X, Y2)
    with pytest.raises(ValueError, match="Unknown metric"): evaluate(X, Y, metrics=["FID"])


# ---------------------------------------------------------------- bootstrap, floor, table

def test_bootstrap_ci():
    rng = np.random.default_rng(13)
    X, Y = likert_means(rng, 400, 5, shift=0.5), likert_means(rng, 1500, 5)
    ci = bootstrap_ci(X, Y, reps=60, seed=0)
    assert list(ci.columns) == ["metric", "value", "bias", "value_bc", "lo", "hi", "method"] and list(ci.metric) == list(METRICS)
    assert (ci.lo <= ci.hi).all()
    row = ci.set_index("metric").loc["MeanDiff"]
    assert row.lo < row.value < row.hi and row.value == pytest.approx(0.5, abs=0.05)
    assert ci.equals(bootstrap_ci(X, Y, reps=60, seed=0))
    other = bootstrap_ci(X, Y, metrics=["AMW", "SW"], reps=60, seed=1)
    assert other.metric.tolist() == ["AMW", "SW"] and not other.equals(ci.iloc[[0, 2]].reset_index(drop=True))
    # resample="X": the Y side is fixed, so the MeanDiff interval is narrower
    cx = bootstrap_ci(X, Y, metrics="MeanDiff", reps=60, seed=0, resample="X").iloc[0]
    assert cx.hi - cx.lo < row.hi - row.lo


@pytest.mark.parametrize("resample", ["both", "X"])
def test_bootstrap_sw_counts_equal_loop(resample):
    rng = np.random.default_rng(16)
    X, Y = likert_means(rng, 150, 5), likert_means(rng, 110, 5, shift=0.1)
    reps, seed = 9, 4
    r = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    IX = r.integers(0, 150, (reps, 150))
    IY = r.integers(0, 110, (reps, 110)) if resample == "both" else np.tile(np.arange(110), (reps, 1))
    for p in (1, 2):
        loop = [sliced_wasserstein(X[IX[i]], Y[IY[i]], n_proj=50, seed=seed, p=p) for i in range(reps)]
        ci = bootstrap_ci(X, Y, "SW", reps=reps, seed=seed, alpha=0.2, resample=resample,
                          params={"SW": {"n_proj": 50, "p": p}}, method="percentile").iloc[0]
        assert ci.value == pytest.approx(sliced_wasserstein(X, Y, n_proj=50, seed=seed, p=p), rel=1e-14)
        assert ci.lo == pytest.approx(np.quantile(loop, 0.1), rel=1e-12)
        assert ci.hi == pytest.approx(np.quantile(loop, 0.9), rel=1e-12)


def test_bootstrap_mmd_batch_equals_loop():
    rng = np.random.default_rng(14)
    X, Y = likert_means(rng, 120, 5), likert_means(rng, 90, 5, shift=0.1)
    reps, seed = 9, 3
    r = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    IX, IY = r.integers(0, 120, (reps, 120)), r.integers(0, 90, (reps, 90))
    s = median_bandwidth(X, Y, seed=seed)
    for ub in (False, True):
        loop = [mmd(X[IX[i]], Y[IY[i]], bandwidth=s, unbiased=ub, dtype=np.float64) for i in range(reps)]
        ci = bootstrap_ci(X, Y, "MMD", reps=reps, seed=seed, alpha=0.2,
                          params={"MMD": {"unbiased": ub, "dtype": np.float64}}, method="percentile").iloc[0]
        assert ci.lo == pytest.approx(np.quantile(loop, 0.1), rel=1e-10)
        assert ci.hi == pytest.approx(np.quantile(loop, 0.9), rel=1e-10)


def test_noise_floor_basics():
    rng = np.random.default_rng(15)
    Y = likert_means(rng, 3000, 5)
    f = noise_floor(Y, 1000, reps=6, seed=0)
    assert list(f.columns) == ["metric", "mean", "sd", "n", "reps"] and list(f.metric) == list(METRICS)
    assert (f["n"] == 1000).all() and (f["reps"] == 6).all() and (f["mean"] > 0).all() and (f["sd"] > 0).all()
    assert f.equals(noise_floor(Y, 1000, reps=6, seed=0))
    assert not f.equals(noise_floor(Y, 1000, reps=6, seed=1))
    with pytest.raises(ValueError, match="2n <= len"): noise_floor(Y, 1501)
    for a, b in _floor_splits(3000, 1500, 5, 0):
        assert len(np.union1d(a, b)) == 3000
    raw = noise_floor(Y, 1000, reps=6, seed=0, raw=True)
    np.testing.assert_allclose(raw.mean().to_numpy(), f["mean"].to_numpy())
    t = compare_table({"A": evaluate(Y[:1000], Y[1000:2000])}, f, ratio=True)
    assert list(t.columns) == ["A", "floor", "floor_sd", "A/floor"] and list(t.index) == list(METRICS)


@pytest.mark.skipif(not has_data(BIG5), reason="BIG5 data not found")
def test_noise_floor_big5():
    S = big5_scores()
    assert S.shape[1] == 5 and len(S) > 19_000
    f1 = noise_floor(S, 500, reps=20, seed=0).set_index("metric")
    f4 = noise_floor(S, 2000, reps=20, seed=0).set_index("metric")
    sd = S.std().to_numpy()
    for n, f in ((500, f1), (2000, f4)):   # E|mean_a - mean_b| = sd·sqrt(2/n)·sqrt(2/π)
        assert f.loc["MeanDiff", "mean"] == pytest.approx(np.mean(sd) * np.sqrt(4 / (np.pi * n)), rel=0.25)
    # sampling error shrinks like 1/sqrt(n): 4x the people, about half the AMW/SW/KS floor
    for k in ("AMW", "SW", "KS"):
        assert 0.35 < f4.loc[k, "mean"] / f1.loc[k, "mean"] < 0.65
    assert 0.15 < f4.loc["MMD", "mean"] / f1.loc["MMD", "mean"] < 0.4   # biased MMD² ~ 1/n
