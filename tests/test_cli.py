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
    pngs = list((tmp_path/"fig").glob("*.png")); csvs = list((tmp_path/"tab").glob("*.csv"))
    assert pngs and csvs, r.stdout
    floor = pd.read_csv(csvs[0])
    assert set(floor["n"]) == {100, 400}
    assert (floor["mean"] > 0).all() and floor["mean"].notna().all()
    # the floor shrinks with n for a consistent metric such as AMW
    amw = floor[floor.metric == "AMW"].set_index("n")["mean"]
    assert amw[400] < amw[100]
