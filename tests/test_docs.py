"README.md and index.ipynb say the same thing (nbdev_readme needs quarto, not installable here); paper-notebook parameters parse."
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_index_matches_readme():
    nb = json.loads((ROOT/"index.ipynb").read_text())
    text = "\n\n".join("".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "markdown")
    readme = (ROOT/"README.md").read_text().strip()
    norm = lambda s: " ".join(s.split())
    assert norm(text) == norm(readme), "index.ipynb differs from README.md: run python tools/readme_to_index.py"


def test_every_paper_parameter_is_seen_by_papermill():
    "papermill silently skips a parameter line it cannot parse (e.g. a comment holding '='); `-p name value` would then be refused."
    import json, re
    import papermill as pm
    for nb in sorted((ROOT / "nbs" / "paper").glob("*.ipynb")):
        cell = next(c for c in json.loads(nb.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        names = [re.match(r"(\w+)", l).group(1) for l in "".join(cell["source"]).splitlines()
                 if re.match(r"\w+\s*(:[^=#]*)?=", l)]
        assert names, nb.name
        missing = sorted(set(names) - set(pm.inspect_notebook(str(nb))))
        assert not missing, f"{nb.name}: papermill does not see {missing}"
