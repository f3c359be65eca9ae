"Build index.ipynb from README.md so the two say the same thing (quarto/nbdev_readme are not available here)."
import json, re, sys
from pathlib import Path
root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
md = (root/"README.md").read_text()
# split at level-2 headings into markdown cells; the first cell holds the title and subtitle
parts = re.split(r"(?m)^(?=## )", md)
cells = [{"cell_type": "markdown", "metadata": {}, "source": p.strip("\n").splitlines(keepends=True)} for p in parts if p.strip()]
nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
      "nbformat": 4, "nbformat_minor": 5}
(root/"index.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
