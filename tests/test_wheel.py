"A built wheel works outside the repository: its package data travels with it and nothing reads <repo>/data."
import os, shutil, subprocess, sys, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = r"""
import sys, popalign
from pathlib import Path
here = Path(popalign.__file__).resolve()
assert str(here).startswith(sys.argv[1]), f"popalign imported from {here}, not the installed wheel"
from popalign.core import package_file
from popalign.taxonomy import load_taxonomy
from popalign.anchors import load_value_tables
from popalign.validity import sensitivity_pairs
from popalign.instruments import Instrument
from popalign.adapter import SHIPPED_ADAPTER
tax = load_taxonomy(); vt = load_value_tables(); pairs = sensitivity_pairs()
spec = Instrument.from_spec(package_file("instruments/example_spec.yaml"))
assert len(tax.leaves) > 200 and len(pairs) == 150 and len(spec) == 10, (len(tax.leaves), len(pairs), len(spec))
assert (SHIPPED_ADAPTER/"head.safetensors").exists() and str(SHIPPED_ADAPTER).startswith(sys.argv[1])
from popalign.cli import main
try: main(["demo", "--help"])
except SystemExit as e: assert e.code == 0
print("WHEEL-OK", len(tax.leaves), len(pairs), len(spec))
"""


def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    src = tmp_path/"src"   # build from a copy, so that setuptools' build/ never lands in the working tree
    shutil.copytree(ROOT/"popalign", src/"popalign", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("setup.py", "settings.ini", "pyproject.toml", "README.md"): shutil.copy2(ROOT/f, src/f)
    wd = tmp_path/"wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wd), str(src)],
                       capture_output=True, text=True, cwd=tmp_path)
    if r.returncode != 0 and "No module named" in r.stderr and ("setuptools" in r.stderr or "wheel" in r.stderr):
        pytest.skip(f"cannot build a wheel here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    whl = next(wd.glob("popalign-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("popalign/data/synth/taxonomy.yaml", "popalign/data/synth/value_tables.yaml",
              "popalign/data/validity/sensitivity_pairs.yaml", "popalign/data/instruments/example_spec.yaml",
              "popalign/data/pra_behaviours.yaml", "popalign/data/pra/smollm2-135m-head/head.safetensors"):
        assert f in names, f"{f} is not in {whl.name}"
    site = tmp_path/"site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(whl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/"elsewhere"; run.mkdir()   # no repo, no data/ and no ../shared beside the working directory
    env = {**os.environ, "PYTHONPATH": str(site), "POPALIGN_DATA": str(run)}
    r = subprocess.run([sys.executable, "-c", CHECK, str(site.resolve())], capture_output=True, text=True, cwd=run, env=env)
    assert r.returncode == 0 and "WHEEL-OK" in r.stdout, (r.stdout[-2000:], r.stderr[-3000:])
    assert "--n-personas" in r.stdout   # the demo's help was printed
