"Papermill smoke run of nbs/paper/tab_individual_validity.ipynb (a subprocess), on the scripted backend and the hash embedder."
import subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from popalign.core import has_data

ROOT = Path(__file__).resolve().parent.parent
NEEDS = ["openpsychometrics/SENTANCES1/data1.csv", "openpsychometrics/BIG5/codebook.txt"]


@pytest.mark.skipif(not all(has_data(p) for p in NEEDS), reason=f"needs the shared data: {NEEDS}")
def test_tab_individual_validity_smoke(tmp_path):
    cmd = [sys.executable, "-m", "popalign.cli", "paper", "tab_individual_validity", "-p", "backend", "scripted",
           "-p", "n_people", "12", "-p", "n_pairs_per_trait", "2", "-p", "embedder", "hash", "-p", "reps", "50",
           "--runs", str(tmp_path/"runs"), "--figures", str(tmp_path/"fig"), "--tables", str(tmp_path/"tab")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    for f in ["tab/individual_validity.csv", "tab/individual_validity.md", "tab/persona_sensitivity.csv",
              "tab/persona_sensitivity.md", "fig/fig_individual_validity.png", "fig/fig_individual_validity.pdf"]:
        assert (tmp_path/f).exists(), f
    v = pd.read_csv(tmp_path/"tab"/"individual_validity.csv")
    assert v.groupby("method").size().tolist() == [5, 5, 5, 5]
    nop = v[v.method.str.startswith("no persona")]
    assert nop.r.isna().all() and nop.note.str.contains("constant").all() and nop.score.notna().all()
    resp = v[v.method.str.startswith("responder")]
    assert (resp.n == 12).all() and resp.r.notna().all() and ((resp.lo <= resp.r) & (resp.r <= resp.hi)).all()
    assert (v[v.method == "text regression, all people"].n == 855).all()
    s = pd.read_csv(tmp_path/"tab"/"persona_sensitivity.csv").set_index("trait")
    assert s.loc[list("ENACO"), "n_pairs"].tolist() == [2] * 5 and s.loc["all", "n_answers"] == 100
    assert ((s.frac_keyed + s.frac_against + s.frac_tie - 1).abs() < 1e-9).all()
