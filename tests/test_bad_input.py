"""Fault injection: real data files (BIG5, itemsgen, the shipped specs) corrupted on purpose, fed to the `popalign` command.

One section per class of issue 14. Each case must end in one of two ways, never a third:
- refused: exit code 2, a one-line message naming the file and the line/row/record/field, and no output file;
- accepted with a warning that names what was skipped or changed (file and lines), and a result equal to what the clean
  part of the input gives.
A raw traceback fails the test (the command is called in-process, so any unexpected exception propagates here).
Cases covered elsewhere: the kill/resume of `respond` and concurrent runs (tests/test_llm.py), Ctrl-C (tests/test_cli.py),
every --flag named in a message exists (tests/test_cli.py), a kill loses at most one short call (nbs/04_llm.ipynb).
"""
import json, os, sqlite3, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from popalign.core import has_data, find_data
from popalign.cli import main

BIG5 = "openpsychometrics/BIG5/data.csv"
ITEMSGEN = "openpsychometrics/itemsgen/data.csv"
needs_big5 = pytest.mark.skipif(not has_data(BIG5), reason="needs ../shared/data (BIG5)")
needs_itemsgen = pytest.mark.skipif(not has_data(ITEMSGEN), reason="needs ../shared/data (itemsgen)")
SCRIPTED = ["--backend", "scripted"]
MISSING_MODEL = ["--backend", "transformers", "--model", "/nonexistent/model.gguf"]   # loading it would fail: it must never be tried


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POPALIGN_CACHE", str(tmp_path/"cache"))


def cli(capsys, *args):
    "Run the command in-process: (exit code, stderr, warnings raised)."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err, [str(x.message) for x in w]


def refused(capsys, *args, names=()):
    "The command must stop with exit 2 and a message containing each of `names`."
    rc, err, _ = cli(capsys, *args)
    assert rc == 2, f"exit {rc}; stderr: {err[-800:]}"
    assert "Traceback" not in err
    for s in names: assert str(s) in err, f"{s!r} not in the message: {err[-800:]}"
    return err


def big5_lines(n=60):
    lines = find_data(BIG5).read_text(encoding="utf-8").splitlines()
    return lines[0], lines[1:n + 1]


def itemsgen_personas(path:Path, n=8):
    "The first n itemsgen writers' three self-descriptions as a persona JSONL file."
    df = pd.read_csv(find_data(ITEMSGEN), sep="\t", nrows=n)
    recs = [{"id": f"w{i}", "text": " ".join(str(df[c][i]) for c in ("item1", "item2", "item3"))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return recs


# ------------------------------------------------------------------ 1. wrong results with exit 0
@needs_itemsgen
def test_responses_are_never_relabelled_to_another_instrument(tmp_path, capsys):
    itemsgen_personas(tmp_path/"p.jsonl")
    assert cli(capsys, "respond", tmp_path/"p.jsonl", "--instrument", "ipip50", "--out", tmp_path/"r.npz", *SCRIPTED)[0] == 0
    refused(capsys, "align", tmp_path/"r.npz", "--reference", "bfi", "-n", 3, "--out", tmp_path/"a.csv",
            names=[tmp_path/"r.npz", "'ipip50', not 'bfi25'"])
    assert not (tmp_path/"a.csv").exists()


# ------------------------------------------------------------------ 2. records dropped or misread
@needs_itemsgen
def test_persona_records_without_text_are_named_never_used(tmp_path, capsys):
    recs = itemsgen_personas(tmp_path/"p.jsonl")
    with open(tmp_path/"p.jsonl", "a") as f:
        f.write(json.dumps({"id": "x1", "name": "Bob", "occupation": "chef"}) + "\n")    # record 9: no text, only name/occupation
        f.write(json.dumps({"id": "x2", "text": 42}) + "\n")                             # record 10: text not a string
    rc, err, w = cli(capsys, "respond", tmp_path/"p.jsonl", "--instrument", "bfi25", "--out", tmp_path/"r.npz", *SCRIPTED)
    assert rc == 0
    assert any("p.jsonl: 2 of 10 records" in m and "[9, 10]" in m for m in w), w
    from popalign.respond import Responses
    R = Responses.load(tmp_path/"r.npz")
    assert [str(i) for i in R.persona_ids] == [r["id"] for r in recs]     # neither "Bob" nor "chef" nor 42 became a persona
    (tmp_path/"none.jsonl").write_text(json.dumps({"id": 1, "name": "Bob"}) + "\n")
    refused(capsys, "respond", tmp_path/"none.jsonl", "--instrument", "bfi25", "--out", tmp_path/"r2.npz", *SCRIPTED,
            names=["none.jsonl", "--text-column"])


def test_critic_refuses_a_record_without_text(tmp_path, capsys):
    p = tmp_path/"m.jsonl"
    p.write_text(json.dumps({"id": 1, "text": "A chef who cooks at dawn.", "source_text": "I cook at dawn."}) + "\n"
                 + json.dumps({"id": 2, "source_text": "I swim."}) + "\n")
    refused(capsys, "critic", p, "--out", tmp_path/"c.jsonl", *SCRIPTED, names=["m.jsonl: 1 persona(s) have no text (records [2], counting from 1)"])
    assert not (tmp_path/"c.jsonl").exists()


def test_mine_names_skipped_corpus_lines(tmp_path, capsys):
    p = tmp_path/"corpus.jsonl"
    good = "I get up at five, run along the river and then write for an hour before my shift at the bakery starts."
    p.write_text(json.dumps({"author_id": "a", "text": 42}) + "\n" + "{broken\n"
                 + "".join(json.dumps({"author_id": "b", "text": f"{good} Day {i}."}) + "\n" for i in range(4)))
    rc, err, w = cli(capsys, "mine", p, "--source", "jsonl", "--out", tmp_path/"m.jsonl", "--no-llm",
                     "--option", "min_tokens=5", "--option", "min_posts=1")
    assert rc == 0, err[-800:]
    assert any("corpus.jsonl: 2 of 6 lines skipped" in m and "bad JSON line: 1 (lines [2])" in m
               and "(lines [1])" in m for m in w), w


# ------------------------------------------------------------------ 3. encodings
@needs_itemsgen
def test_one_latin1_byte_costs_one_line(tmp_path, capsys):
    recs = itemsgen_personas(tmp_path/"p.jsonl")
    lines = (tmp_path/"p.jsonl").read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"text": "', '"text": "Caf\u00e9 owner. '.encode())              # UTF-8 é
    lines[3] = lines[3].replace(b'"text": "', b'"text": "Paid 5\xa3. ')                          # a latin-1 £
    (tmp_path/"p.jsonl").write_bytes(b"".join(lines))
    rc, err, w = cli(capsys, "respond", tmp_path/"p.jsonl", "--instrument", "bfi25", "--out", tmp_path/"r.npz", *SCRIPTED)
    assert rc == 0
    assert any("p.jsonl: 1 of 8 lines are not valid UTF-8" in m and "(lines [4])" in m for m in w), w
    from popalign.importers import read_personas
    with warnings.catch_warnings(): warnings.simplefilter("ignore"); df = read_personas(tmp_path/"p.jsonl")
    assert df.text[0].startswith("Caf\u00e9 owner.") and df.text[3].startswith("Paid 5\u00a3.")   # no mojibake either side


# ------------------------------------------------------------------ 4. the cache
@needs_itemsgen
@pytest.mark.parametrize("damage", ["truncated", "edited value"])
def test_a_damaged_cache_is_detected_and_the_answers_are_right(tmp_path, capsys, damage):
    itemsgen_personas(tmp_path/"p.jsonl", n=4)
    args = ["respond", tmp_path/"p.jsonl", "--instrument", "bfi25", *SCRIPTED]
    assert cli(capsys, *args, "--out", tmp_path/"clean.npz", "--no-cache")[0] == 0
    # the cache is filled by a process that ends (as a real earlier run does: its WAL is checkpointed into the file)
    subprocess.run([sys.executable, "-m", "popalign.cli", *map(str, args), "--out", str(tmp_path/"first.npz")], check=True,
                   capture_output=True, timeout=600, env={**os.environ, "POPALIGN_CACHE": str(tmp_path/"cache")})
    db = tmp_path/"cache"/"llm_cache.sqlite"
    assert db.stat().st_size > 3000 and not Path(str(db) + "-wal").exists()
    if damage == "truncated":
        db.write_bytes(db.read_bytes()[:3000])
    else:
        with sqlite3.connect(db) as c: c.execute("UPDATE responses SET value = '[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]'")
    rc, err, w = cli(capsys, *args, "--out", tmp_path/"again.npz")
    assert rc == 0
    assert any(str(db) in m for m in w), w                               # the damage is reported, naming the file
    from popalign.respond import Responses
    clean, again = Responses.load(tmp_path/"clean.npz"), Responses.load(tmp_path/"again.npz")
    assert np.allclose(clean.probs, again.probs)                         # never a damaged value served


# ------------------------------------------------------------------ 5. advice the command line can follow
@needs_big5
def test_csv_reference_advice_is_a_flag_that_works(tmp_path, capsys):
    header, rows = big5_lines(40)
    (tmp_path/"people.csv").write_text("\n".join([header] + rows) + "\n")
    (tmp_path/"p.txt").write_text("".join(f"Person {i} enjoys {'crowds' if i % 2 else 'books'}.\n" for i in range(12)))
    assert cli(capsys, "respond", tmp_path/"p.txt", "--instrument", "ipip50", "--out", tmp_path/"r.npz", *SCRIPTED)[0] == 0
    refused(capsys, "align", tmp_path/"r.npz", "--reference", tmp_path/"people.csv", "-n", 4, "--out", tmp_path/"a.csv",
            names=["people.csv", "--instrument NAME"])
    rc, err, _ = cli(capsys, "align", tmp_path/"r.npz", "--reference", tmp_path/"people.csv", "--instrument", "ipip50",
                     "-n", 4, "--out", tmp_path/"a.csv")
    assert rc == 0 and len(pd.read_csv(tmp_path/"a.csv")) == 4


# ------------------------------------------------------------------ 6. specs and references
SPEC_HEAD = "name: mine\nscale_min: 1\nscale_max: 5\nitems:\n  - {id: E1, text: I am the life of the party., trait: E}\n"
@pytest.mark.parametrize("item, says", [
    ("{id: E2, text: I don't talk a lot., trait: E, sing: -1}", ["item 1 ('E2') has unknown field(s) ['sing']"]),
    ("{id: E2, text: I don't talk a lot., trait: E, sign: -1.7}", ["item 1 ('E2')", "sign must be 1 or -1"]),
    ("{id: E2, text: I don't talk a lot., trait: E, sign: '-'}", ["item 1 ('E2')", "sign must be 1 or -1"]),
    ("{id: E2, text: null, trait: E}", ["item 1 ('E2') lacks ['text']"]),
    ("{id: E2, text: I don't talk a lot., trait: E", ["line 7: not valid YAML"]),
])
def test_a_bad_instrument_spec_names_file_and_item(tmp_path, capsys, item, says):
    (tmp_path/"spec.yaml").write_text(SPEC_HEAD + "  - " + item + "\n")
    (tmp_path/"p.txt").write_text("A quiet librarian.\n")
    refused(capsys, "respond", tmp_path/"p.txt", "--instrument", tmp_path/"spec.yaml", "--out", tmp_path/"r.npz", *MISSING_MODEL,
            names=["spec.yaml", *says])
    assert not (tmp_path/"r.npz").exists()


@needs_big5
@pytest.mark.parametrize("case", ["header only", "duplicated item column", "short line"])
def test_a_bad_reference_file_is_refused_with_its_line(tmp_path, capsys, case):
    header, rows = big5_lines(40)
    sep = "\t"
    if case == "header only": text, says = [header], ["ref.csv", "no usable rows", "header but no data"]
    elif case == "duplicated item column":
        text, says = [header + sep + "E1"] + [r + sep + r.split(sep)[7] for r in rows], ["ref.csv, line 1", "['E1'] appear more than once"]
    else:
        rows[10] = sep.join(rows[10].split(sep)[:20]); text, says = [header] + rows, ["ref.csv, line 12", "found 20"]
    (tmp_path/"ref.csv").write_text("\n".join(text) + "\n")
    (tmp_path/"p.txt").write_text("".join(f"Person {i}.\n" for i in range(8)))
    assert cli(capsys, "respond", tmp_path/"p.txt", "--instrument", "ipip50", "--out", tmp_path/"r.npz", *SCRIPTED)[0] == 0
    refused(capsys, "align", tmp_path/"r.npz", "--reference", tmp_path/"ref.csv", "--instrument", "ipip50", "-n", 3,
            "--out", tmp_path/"a.csv", names=says)
    assert not (tmp_path/"a.csv").exists()


@needs_big5
def test_dropped_reference_rows_are_named_and_really_dropped(tmp_path):
    from popalign.reference import load_reference
    header, rows = big5_lines(30)
    f = rows[4].split("\t"); f[7] = "0"; rows[4] = "\t".join(f)                      # line 6: E1 = 0 (missing code)
    rows[8] = "\t".join(rows[8].split("\t")[:7] + ["0"] * 50)                           # line 10: nothing answered
    (tmp_path/"ref.csv").write_text("\n".join([header] + rows) + "\n")
    with pytest.warns(UserWarning, match=r"ref.csv: 2 of 30 rows dropped — no item answered: 1 \(lines \[10\]\); some items missing: 1 \(lines \[6\]\)"):
        ref = load_reference(tmp_path/"ref.csv", instrument="ipip50")
    assert len(ref) == 28 and ref.n_read == 30


# ------------------------------------------------------------------ 7. work not lost: every check before the model loads
@pytest.mark.parametrize("cmd, says", [
    (["respond", "{p}", "--instrument", "bfi25", "--out", "{t}/r.csv"], ["--out must end in .npz"]),
    (["respond", "{p}", "--instrument", "bfi25", "--out", "{t}/r.npz", "--limit", "0"], ["positive"]),
    (["respond", "{p}", "--instrument", "bfi99", "--out", "{t}/r.npz"], ["bfi99"]),
    (["critic", "{t}/missing.jsonl", "--out", "{t}/c.jsonl"], ["missing.jsonl does not exist"]),
    (["critic", "{p}", "--out", "{t}/c.jsonl"], ["p.jsonl has no column(s) ['source_text']", "--allow-no-source"]),
    (["deid", "{p}", "--out", "{t}/d.csv"], ["--out must end in .jsonl or .parquet"]),
    (["deid", "{p}", "--out", "{t}/d.jsonl", "--text-col", "bio"], ["p.jsonl has no column(s) ['bio']"]),
    (["mine", "{t}/no-corpus", "--out", "{t}/m.jsonl"], ["no-corpus does not exist"]),
    (["synth", "--out", "{t}/s.jsonl", "-n", "3", "--taxonomy", "{t}/tax.yaml"], ["tax.yaml does not exist"]),
])
def test_inputs_are_checked_before_the_model_loads(tmp_path, capsys, cmd, says):
    p = tmp_path/"p.jsonl"; p.write_text(json.dumps({"id": 1, "text": "A nurse who paints."}) + "\n")
    args = [a.format(p=p, t=tmp_path) for a in cmd]
    err = refused(capsys, *args, *MISSING_MODEL, names=says)
    assert "nonexistent" not in err                     # the model (which cannot load) was never reached


# ------------------------------------------------------------------ 8. the cache is not written inside the checkout
def test_default_cache_is_the_user_cache_folder(tmp_path, capsys, monkeypatch):
    from popalign.core import REPO_ROOT
    monkeypatch.delenv("POPALIGN_CACHE"); monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path/"xdg"))
    monkeypatch.chdir(REPO_ROOT)
    (tmp_path/"p.txt").write_text("A calm gardener.\n")
    before = set((REPO_ROOT/".cache").rglob("*")) if (REPO_ROOT/".cache").exists() else set()
    assert cli(capsys, "respond", tmp_path/"p.txt", "--instrument", "bfi25", "--out", tmp_path/"r.npz", *SCRIPTED)[0] == 0
    after = set((REPO_ROOT/".cache").rglob("*")) if (REPO_ROOT/".cache").exists() else set()
    assert after == before
    import platform
    if platform.system() == "Linux": assert (tmp_path/"xdg"/"popalign"/"llm_cache.sqlite").exists()
