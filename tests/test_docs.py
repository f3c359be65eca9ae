"README.md and index.ipynb must say the same thing (nbdev_readme needs quarto, which is not installable here)."
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_index_matches_readme():
    nb = json.loads((ROOT/"index.ipynb").read_text())
    text = "\n\n".join("".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "markdown")
    readme = (ROOT/"README.md").read_text().strip()
    norm = lambda s: " ".join(s.split())
    assert norm(text) == norm(readme), "index.ipynb differs from README.md: run python tools/readme_to_index.py"
