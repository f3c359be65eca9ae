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


NUM = r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?"


def table_numbers(blob:str)->set:
    "Every number of the tables as written (commas dropped), and each decimal also rounded to 1-4 places."
    out = set()
    for t in re.findall(NUM, blob):
        t = t.replace(",", ""); out.add(t)
        if "." in t and "e" not in t:
            v = float(t)
            out |= {f"{v:.{d}f}" for d in range(1, min(4, len(t.split(".")[1])) + 1)}
    return out


def backed(n:str, nums:set)->bool:
    "A README number is backed when a table holds it, as written or as the correct rounding of a longer decimal."
    return n.replace(",", "") in nums


def test_results_numbers_come_from_tables():
    blob = "\n".join(p.read_text(encoding="utf-8", errors="replace").replace(",", " " if p.suffix == ".csv" else ",")
                     for p in (ROOT/"tables").rglob("*") if p.is_file())       # a CSV's commas separate fields, not thousands
    nums = results_numbers((ROOT/"README.md").read_text(encoding="utf-8"))
    assert len(nums) > 20                                   # the check reads the section it is meant to read
    have = table_numbers(blob)
    miss = sorted(n for n in nums if not backed(n, have))
    assert not miss, f"README numbers found in no tables/ file: {miss}"


def test_a_number_is_not_backed_by_a_longer_one_that_starts_with_it():
    have = table_numbers("AMW 0.3194 and 1,234 people; 0.12 [0.05, 0.2]")
    assert backed("0.319", have) and backed("0.32", have) and backed("1,234", have) and backed("0.12", have)
    assert not backed("0.31", have)          # 0.3194 rounds to 0.32, not 0.31: a substring match would have passed it
    assert backed("0.1", have)               # 0.12 to one place
    assert not backed("123", have) and not backed("0.13", have) and not backed("234", have)


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
