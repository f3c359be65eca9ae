"""Run every test: each notebook under nbs/ with nbdev's `test_nb` (same rules as `nbdev_test`),
then `pytest tests/`. Prints one closing line `N passed, N failed` counting notebooks and pytest tests.

Usage: python tests/run_all.py [--flags "slow llm"] [--only NAME_SUBSTRING] [--no-pytest]
"""
import argparse, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class _Count:
    "pytest plugin that counts outcomes."
    def __init__(self): self.passed = self.failed = self.skipped = 0
    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if report.outcome == "passed": self.passed += 1
            elif report.outcome == "failed": self.failed += 1
            else: self.skipped += 1
        elif report.when == "teardown" and report.outcome == "failed": self.failed += 1
    def pytest_collectreport(self, report):
        if report.failed: self.failed += 1


def run_notebooks(flags, only):
    from nbdev.config import get_config
    from nbdev.test import test_nb, _keep_file
    from nbdev.doclinks import nbglob
    from fastcore.parallel import parallel
    cfg = get_config()
    skip = cfg.tst_flags.split()
    force = flags.split()
    skip = [f for f in skip if f not in force]
    files = [Path(f).absolute() for f in nbglob(None, as_path=True)]
    files = sorted(f for f in files if _keep_file(f, ".notest") and (not only or only in f.name))
    os.chdir(cfg.nbs_path)
    t0 = time.time()
    res = parallel(test_nb, files, skip_flags=skip, force_flags=force, n_workers=int(os.environ.get("NB_WORKERS", 2)),
                   basepath=cfg.config_path, pause=0.5, do_print=True)
    os.chdir(ROOT)
    passed = failed = 0
    for f, (ok, dur) in zip(files, res):
        print(f"{'PASS' if ok else 'FAIL'}  {f.relative_to(cfg.config_path)}  ({dur:.1f}s)")
        passed += ok; failed += (not ok)
    print(f"notebooks: {passed} passed, {failed} failed in {time.time()-t0:.0f}s")
    return passed, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flags", default="", help="test flags to run anyway (e.g. 'slow llm')")
    ap.add_argument("--only", default="", help="only notebooks whose file name contains this")
    ap.add_argument("--no-pytest", action="store_true", help="skip tests/ (pytest)")
    ap.add_argument("--no-notebooks", action="store_true", help="skip notebooks")
    a = ap.parse_args()
    os.chdir(ROOT)
    np_ = nf = 0
    if not a.no_notebooks: np_, nf = run_notebooks(a.flags, a.only)
    pp = pf = 0
    if not a.no_pytest:
        import pytest
        c = _Count()
        rc = pytest.main(["-q", "-p", "no:cacheprovider", str(ROOT/"tests")], plugins=[c])
        pp, pf = c.passed, c.failed
        if rc not in (0, 5) and pf == 0: pf = 1  # internal/usage errors count as a failure
        print(f"pytest: {pp} passed, {pf} failed, {c.skipped} skipped")
    passed, failed = np_ + pp, nf + pf
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or passed == 0 else 0)


if __name__ == "__main__": main()
