"End-to-end tests of the `popalign` command (subprocesses, papermill)."
import os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "popalign.cli"]


def run(*args, cwd=ROOT, check=True):
    r = subprocess.run(EXE + list(args), cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0: raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def test_help_lists_commands():
    out = run("--help").stdout
    for cmd in ("paper", "bench", "demo"): assert cmd in out
    assert "--sizes" in run("bench", "--help").stdout


def test_paper_list_shows_parameters():
    out = run("paper", "--list").stdout
    assert "fig_reference" in out and "seed (int)" in out


def test_unknown_paper_is_a_clear_error():
    r = run("paper", "nope", check=False)
    assert r.returncode == 2 and "Known:" in r.stderr


def test_fig_reference_writes_png_and_csv(tmp_path):
    "Runs the paper notebook on the embedded psych::bfi reference (no ../shared/data needed)."
    r = run("paper", "fig_reference", "-p", "reference", "bfi", "-p", "n_list", "[100, 400]", "-p", "reps", "3",
            "--runs", str(tmp_path/"runs"), "--figures", str(tmp_path/"fig"), "--tables", str(tmp_path/"tab"))
    assert (tmp_path/"runs"/"fig_reference"/"fig_reference.ipynb").exists()
    pngs = list((tmp_path/"fig").glob("*.png")); csvs = list((tmp_path/"tab").glob("noise_floor_*.csv"))
    assert pngs and csvs, r.stdout
    floor = pd.read_csv(csvs[0])
    lfl = pd.read_csv(tmp_path/"tab"/"floor_like_for_like_bfi.csv", index_col=0)   # measured twice, from disjoint people
    assert (lfl["floor from A"] > 0).all() and (lfl["floor from B"] > 0).all() and (lfl["sd A"] > 0).all()
    assert set(floor["n"]) == {100, 400}
    assert (floor["mean"] > 0).all() and floor["mean"].notna().all()
    # the floor shrinks with n for a consistent metric such as AMW
    amw = floor[floor.metric == "AMW"].set_index("n")["mean"]
    assert amw[400] < amw[100]


def test_respond_then_align_with_scripted_backend(tmp_path):
    "respond → align through the command line, on the deterministic scripted backend and psych::bfi."
    people = [f"Person {i} is a {20 + i}-year-old who likes {'parties' if i % 2 else 'quiet evenings'}." for i in range(40)]
    (tmp_path/"p.txt").write_text("\n".join(people))
    run("respond", str(tmp_path/"p.txt"), "--instrument", "bfi25", "--out", str(tmp_path/"r.npz"), "--backend", "scripted",
        "--no-cache")
    import numpy as np
    from popalign.respond import Responses, respond
    from popalign.llm import ScriptedLLM
    from popalign.reference import load_reference
    from popalign.align import align
    R = Responses.load(tmp_path/"r.npz")
    api = respond(people, "bfi25", ScriptedLLM())                  # what the library computes for the same input
    assert [str(i) for i in R.persona_ids] == [str(i) for i in api.persona_ids]
    np.testing.assert_allclose(R.expected(), api.expected(), atol=1e-12)
    assert np.ptp(R.expected(), axis=0).max() > 0.1                # persona-dependent answers, not a constant
    out = run("align", str(tmp_path/"r.npz"), "--reference", "bfi", "-n", "10", "--out", str(tmp_path/"sel.csv")).stdout
    sel = pd.read_csv(tmp_path/"sel.csv")
    res = align(pd.DataFrame(R.expected(), columns=R.item_ids), load_reference("bfi"), 10, seed=0)
    assert sel["row"].tolist() == [int(i) for i in res.indices]    # the personas the API selects, in its order
    assert sel["persona_id"].astype(str).tolist() == [str(R.persona_ids[i]) for i in res.indices]
    m = pd.read_csv(tmp_path/"sel_metrics.csv", index_col=0)
    assert {"raw pool", "random", "aligned", "floor"} <= set(m.columns) and "floor" in out
    from popalign.metrics import evaluate
    ref = load_reference("bfi"); H = ref.scores().to_numpy(float)
    S = ref.instrument.score(pd.DataFrame(R.expected(), columns=R.item_ids)).to_numpy(float)
    assert abs(m.loc["AMW", "aligned"] - evaluate(S[res.indices], H, seed=0)["AMW"]) < 1e-9
    assert abs(m.loc["AMW", "raw pool"] - evaluate(S, H, seed=0)["AMW"]) < 1e-9


def test_deid_removes_an_email(tmp_path):
    (tmp_path/"in.jsonl").write_text('{"id": "a", "text": "Maya writes to maya.k@example.org about her garden."}\n')
    run("deid", str(tmp_path/"in.jsonl"), "--out", str(tmp_path/"out.jsonl"), "--no-llm")
    text = (tmp_path/"out.jsonl").read_text()
    assert "maya.k@example.org" not in text and "garden" in text


def test_synth_template_pool(tmp_path):
    run("synth", "-n", "12", "--out", str(tmp_path/"s.jsonl"), "--no-llm", "--seed", "3")
    lines = (tmp_path/"s.jsonl").read_text().splitlines()
    assert len(lines) == 13   # provenance header + 12 personas
    from popalign.core import load_artifact
    from popalign.synth import synthesize
    recs, prov = load_artifact(tmp_path/"s.jsonl")
    api = synthesize(12, anchor_tables="uniform", seed=3)          # the library, same seed and default embedder
    assert [r["text"] for r in recs] == api.text.tolist() and [r["attributes"] for r in recs] == api.attributes.tolist()
    assert len({r["text"] for r in recs}) == 12 and prov["seed"] == 3 and prov["stage"] == "synth"


@pytest.mark.skipif(not (ROOT.parent/"shared"/"data"/"openpsychometrics"/"itemsgen").exists(), reason="../shared/data not present")
def test_mine_rule_steps_on_itemsgen(tmp_path):
    out = run("mine", "--source", "itemsgen", "--out", str(tmp_path/"m.jsonl"), "--no-llm", "--limit-authors", "30").stdout
    assert (tmp_path/"m.jsonl").exists() and "first_person" in out


def test_align_refuses_responses_to_another_instrument(tmp_path):
    "ipip50 answers against the bfi reference (bfi25, whose ids A1–O5 are ipip50 ids too) are an error, never re-labelled."
    (tmp_path/"p.txt").write_text("A calm person who likes quiet evenings.\nA loud person who likes parties.\n")
    run("respond", str(tmp_path/"p.txt"), "--instrument", "ipip50", "--out", str(tmp_path/"r.npz"), "--backend", "scripted", "--no-cache")
    r = run("align", str(tmp_path/"r.npz"), "--reference", "bfi", "-n", "1", "--out", str(tmp_path/"sel.csv"), check=False)
    assert r.returncode != 0 and not (tmp_path/"sel.csv").exists()
    assert "cannot be used with bfi25: they answer 'ipip50'" in r.stderr and "--instrument bfi25" in r.stderr


def test_align_with_a_csv_reference_and_instrument(tmp_path):
    "A CSV reference needs its instrument, and the CLI can say it (--instrument); without it the error names the flag."
    from popalign.reference import load_reference
    bfi = load_reference("bfi")
    bfi.responses.iloc[:600][bfi.instrument.item_ids].to_csv(tmp_path/"people.csv", index=False)
    people = [f"Person {i} likes {'parties' if i % 2 else 'quiet evenings'} and {['tea', 'chess', 'hiking'][i % 3]}." for i in range(24)]
    (tmp_path/"p.txt").write_text("\n".join(people))
    run("respond", str(tmp_path/"p.txt"), "--instrument", "bfi25", "--out", str(tmp_path/"r.npz"), "--backend", "scripted", "--no-cache")
    r = run("align", str(tmp_path/"r.npz"), "--reference", str(tmp_path/"people.csv"), "-n", "5", "--out", str(tmp_path/"s.csv"), check=False)
    assert r.returncode != 0 and "--instrument NAME" in r.stderr
    run("align", str(tmp_path/"r.npz"), "--reference", str(tmp_path/"people.csv"), "--instrument", "bfi25", "-n", "5",
        "--out", str(tmp_path/"s.csv"))
    assert len(pd.read_csv(tmp_path/"s.csv")) == 5


def test_every_flag_an_error_message_names_exists():
    "Advice the user cannot follow is a bug: each --flag in a raised message is a flag of the popalign command."
    import argparse, ast, re
    from popalign.cli import build_parser
    flags = set()
    def walk(parser):
        for a in parser._actions:
            flags.update(a.option_strings)
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values(): walk(sp)
    walk(build_parser())
    named = []
    for f in sorted((ROOT/"popalign").rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(n, ast.Raise) and n.exc is not None:
                s = " ".join(x.value for x in ast.walk(n.exc) if isinstance(x, ast.Constant) and isinstance(x.value, str))
                s = re.sub(r"pip install[^.;)]*", "", s)          # pip's own flags are not ours
                named += [(f.name, n.lineno, fl) for fl in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", s)]
    assert named, "no message names a flag (the check would be empty)"
    bad = [x for x in named if x[2] not in flags]
    assert not bad, f"messages name flags the CLI does not have: {bad}"


def test_a_damaged_cache_does_not_stop_a_run(tmp_path):
    "An overwritten cache file is moved aside with a warning naming it; the run finishes and writes its output."
    cache = tmp_path/"cache"; cache.mkdir(); (cache/"llm_cache.sqlite").write_bytes(b"garbage, not SQLite " * 200)
    (tmp_path/"p.txt").write_text("A calm person.\nA loud person.\n")
    r = subprocess.run(EXE + ["respond", str(tmp_path/"p.txt"), "--instrument", "bfi25", "--out", str(tmp_path/"r.npz"),
                              "--backend", "scripted"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "POPALIGN_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path/"r.npz").exists() and "moved to" in r.stderr and str(cache/"llm_cache.sqlite") in r.stderr
    assert list(cache.glob("llm_cache.sqlite.corrupt-*"))


def test_respond_checks_its_output_before_any_work(tmp_path):
    "A wrong --out or --limit 0 is refused at once, before the model loads or a prompt is scored."
    (tmp_path/"p.txt").write_text("A calm person.\n")
    for extra, msg in ((["--out", str(tmp_path/"r.csv")], "must end in .npz"), (["--out", str(tmp_path/"r.npz"), "--limit", "0"], "positive")):
        r = run("respond", str(tmp_path/"p.txt"), "--instrument", "bfi25", *extra, check=False)   # the embedded backend: never loaded
        assert r.returncode == 2 and msg in r.stderr, r.stderr[-500:]
        assert "Loading weights" not in r.stderr


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    "Ctrl-C ends with a sentence and exit 130, not a traceback (monkeypatch restores the handler table afterwards)."
    from popalign import cli
    def boom(a): raise KeyboardInterrupt
    monkeypatch.setitem(cli._HANDLERS, "demo", boom)
    assert cli.main(["demo"]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("popalign.core").core.has_data("openpsychometrics/BIG5/data.csv"),
                    reason="the paper notebooks read ../shared/data")
def test_paper_all_quick_smoke_runs_the_paper_notebooks(tmp_path):
    "`popalign paper --all --quick` runs every notebook that has a quick mode, in order, writing only under --runs."
    before = {p: p.stat().st_mtime_ns for p in (ROOT/"tables").glob("*")}
    out = run("paper", "--all", "--quick", "--runs", str(tmp_path)).stdout
    ran = [l.split(":")[0] for l in out.splitlines() if l.endswith("files written")]
    assert ran == ["fig_reference", "tab_alignment_oracle", "tab_mining_funnel", "tab_pools_ipip50", "tab_individual_validity",
                   "tab_main", "tab_revise", "tab_groups"], out
    assert "skipped tab_pra: no quick mode" in out          # said, not hidden
    made = {p.name for p in (tmp_path/"tables").glob("*.md")}
    assert {"main_ipip50.md", "main_ood.md", "main_corr.md", "mining_funnel.md", "pools_ipip50.md", "revise_summary.md",
            "revise_rounds.md", "revise_ood.md", "groups_table4.md", "groups_retrieval.md"} <= made, made
    head = (tmp_path/"tables"/"main_ipip50.md").read_text()
    assert "QUICK SMOKE RUN" in head and "ScriptedLLM" in head     # a smoke run never waits on the real model
    t1 = pd.read_csv(tmp_path/"tables"/"main_ipip50.csv")
    assert {"no persona, T=1", "pool (raw)", "random", "matching only", "IS only", "IS + OT"} <= set(t1["set"])
    assert (t1.dropna(subset=["value"]).floor > 0).all() and t1.floor_geometry.str.contains("held-out").all()
    assert {p: p.stat().st_mtime_ns for p in (ROOT/"tables").glob("*")} == before   # the real tables are untouched


def test_revise_end_to_end_and_resume(tmp_path):
    "popalign revise on the scripted backend: files written, every empty revision rejected and counted, a rerun resumes."
    people = [f"Person {i} is a {20 + i}-year-old who likes {'parties' if i % 2 else 'quiet evenings'}." for i in range(30)]
    (tmp_path/"p.txt").write_text("\n".join(people))
    args = ("revise", str(tmp_path/"p.txt"), "--reference", "bfi", "-n", "8", "--rounds", "2", "--out", str(tmp_path/"rv"),
            "--backend", "scripted", "--no-cache")
    first = run(*args)
    out = tmp_path/"rv"
    for f in ("round_01.json", "round_02.json", "report.csv", "revisions.jsonl", "personas.jsonl", "selected.csv"):
        assert (out/f).exists(), f
    rep = pd.read_csv(out/"report.csv")
    assert rep["round"].tolist() == [0, 1, 2] and "floor AMW" in rep
    later = rep[rep["round"] > 0]
    assert (later["rejected: empty"] == later["asked"]).all() and (later["accepted"] == 0).all()   # the double writes nothing
    assert (later["asked"] > 0).all()
    again = run(*args)                                   # finished rounds are read back, not recomputed
    assert pd.read_csv(out/"report.csv").drop(columns="seconds").equals(rep.drop(columns="seconds"))
    r = run(*args, "--max-traits", "1", check=False)     # other settings, same folder: refused
    assert r.returncode == 2 and "another run" in r.stderr


def test_revise_refuses_an_instrument_without_revision_wording(tmp_path):
    (tmp_path/"p.txt").write_text("\n".join(f"Person {i} likes tea." for i in range(10)))
    r = run("revise", str(tmp_path/"p.txt"), "--reference", "cfcs", "-n", "4", "--out", str(tmp_path/"rv"), "--backend", "scripted",
            "--no-cache", check=False)
    assert r.returncode == 2 and "No revision wording for trait(s)" in r.stderr, r.stderr
    assert not (tmp_path/"rv").exists()
