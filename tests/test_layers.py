"The package's layering: no module reaches into another module's private names."
import ast
from pathlib import Path

import popalign

PKG = Path(popalign.__file__).parent


def private_imports(source: str, module: str) -> list[str]:
    "`from X import _name` where X is another popalign module (relative or absolute); `__future__` and dunders excepted."
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom): continue
        mod = ("." * node.level) + (node.module or "")
        if not (node.level or mod.startswith("popalign")): continue
        for a in node.names:
            if a.name.startswith("_") and not a.name.startswith("__"):
                bad.append(f"{module}: from {mod} import {a.name}")
    return bad


def test_checker_catches_private_imports():
    src = "from .importance import _as_matrix, ok\nfrom popalign.mine import _done\nfrom __future__ import annotations\nfrom os import _exit\n"
    assert private_imports(src, "m") == ["m: from .importance import _as_matrix", "m: from popalign.mine import _done"]


def test_no_module_imports_another_modules_private_names():
    bad = []
    for p in sorted(PKG.rglob("*.py")):
        if p.name == "_modidx.py": continue
        bad += private_imports(p.read_text(encoding="utf-8"), str(p.relative_to(PKG)))
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


# --- dependencies: the core needs no extra, and every extra an error names exists -----------------------------------
import configparser, re, subprocess, sys

from popalign.core import EXTRAS

ROOT = PKG.parent
HEAVY = ("transformers", "sentence_transformers", "spacy", "presidio_analyzer", "vllm", "llama_cpp", "papermill", "peft")


def settings():
    c = configparser.ConfigParser(delimiters=["="]); c.read(ROOT/"settings.ini", encoding="utf-8"); return c["DEFAULT"]


def test_every_extra_has_requirements_and_the_core_has_none_of_them():
    s = settings()
    core = s["requirements"].lower()
    for k in EXTRAS:
        reqs = s.get(f"{k}_requirements", "").split()
        assert reqs, f"settings.ini has no {k}_requirements for the '{k}' extra"
        for r in reqs:
            name = re.split(r"[<>=!;\[]", r)[0].lower()
            assert not re.search(rf"(^|\s){re.escape(name)}([<>=!\s]|$)", core), f"{name} is both core and in the '{k}' extra"


def test_every_extra_named_in_a_message_exists():
    named = set()
    for p in PKG.rglob("*.py"):
        named |= set(re.findall(r"popalign\[(\w+)\]", p.read_text(encoding="utf-8")))
    assert named, "no message names an extra (the check would be empty)"
    assert named <= set(EXTRAS), f"messages name extras that do not exist: {sorted(named - set(EXTRAS))}"


def test_core_pipeline_imports_no_heavy_dependency():
    code = ("import sys, popalign.align, popalign.metrics, popalign.transport, popalign.importance, popalign.reference, "
            "popalign.respond, popalign.llm, popalign.privacy, popalign.synth, popalign.cli\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", f"importing the package loads heavy extras: {r.stdout.strip()}"


def test_every_module_the_notebooks_import_is_installed():
    "What the notebooks (paper notebooks included) import comes with `make` (core + the dev, llm, pii, paper extras)."
    import importlib.util, json
    optional = {"vllm", "llama_cpp"}        # GPU / source-built backends, imported only when asked for
    mods = {}
    for nb in sorted((ROOT/"nbs").rglob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code": continue
            for m in re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", "".join(cell["source"]), re.M):
                mods.setdefault(m, nb.name)
    assert "numpy" in mods and "seaborn" in mods            # the scan sees the notebooks
    missing = {m: nb for m, nb in mods.items() if m not in optional and m != "__future__" and importlib.util.find_spec(m) is None}
    assert not missing, f"imported by notebooks but not installed by `make venv`: {missing}"
