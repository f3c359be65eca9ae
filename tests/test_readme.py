"""README honesty: every number in its results section comes from a file in tables/, and index.ipynb says the same."""
import json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def results_numbers(readme:str)->set:
    "Numbers of the results section (decimals, thousands, ≥ 3 digits; years and link targets left out)."
    m = re.search(r"^## (What it shows|Results)[^\n]*\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert m, "README.md has no '## What it shows' / '## Results' section"
    sec = re.sub(r"\]\([^)]*\)", "]", re.sub(r"```.*?```", "", m.group(2), flags=re.S))
    return {n for n in re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?:\.\d+)?", sec)
            if ("." in n or "," in n or len(n) >= 3) and not re.fullmatch(r"(19|20)\d\d", n)}


def test_results_numbers_come_from_tables():
    blob = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in (ROOT/"tables").rglob("*") if p.is_file())
    nums = results_numbers((ROOT/"README.md").read_text(encoding="utf-8"))
    assert len(nums) > 20                                   # the check reads the section it is meant to read
    miss = sorted(n for n in nums if n not in blob and n.replace(",", "") not in blob.replace(",", ""))
    assert not miss, f"README numbers found in no tables/ file: {miss}"


def test_check_can_fail():
    fake = "# x\n## What it shows so far\nAMW 0.123456 beside 98,765 people in 2024.\n## Layout\n"
    assert results_numbers(fake) == {"0.123456", "98,765"}


def test_index_matches_readme(tmp_path):
    (tmp_path/"README.md").write_text((ROOT/"README.md").read_text(encoding="utf-8"), encoding="utf-8")
    subprocess.run([sys.executable, str(ROOT/"tools"/"readme_to_index.py"), str(tmp_path)], check=True)
    want = json.loads((tmp_path/"index.ipynb").read_text(encoding="utf-8"))
    have = json.loads((ROOT/"index.ipynb").read_text(encoding="utf-8"))
    assert [c["source"] for c in have["cells"]] == [c["source"] for c in want["cells"]], \
        "index.ipynb differs from README.md: run python tools/readme_to_index.py"
