"PII de-identification: offline model load, planted-PII test set (zero leaks), held-out paragraphs, LLM layer, CLI."
import json, os, random, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from popalign.core import load_artifact, save_artifact
from popalign import privacy as P


@pytest.fixture(scope="module")
def planted():
    ts = P.pii_testset()
    clean, rep = P.deidentify([x["text"] for x in ts])
    return ts, clean, rep, P.evaluate_deid(ts, clean, rep)


def test_offline_load_and_run():
    "The spaCy pipeline and Presidio load and run with every network connection refused."
    code = r"""
import socket, json
def _no(*a, **k): raise OSError("network disabled in this test")
socket.socket.connect = _no; socket.create_connection = _no; socket.getaddrinfo = _no
from popalign.privacy import deidentify
c, r = deidentify(["Kenji Watanabe, 29, emails kenji.w@example.org and calls +81 90-1234-5678."])
print(json.dumps({"clean": c[0], "types": [x["type"] for x in r[0]]}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Kenji" not in res["clean"] and "kenji.w@example.org" not in res["clean"]
    assert sorted(res["types"]) == ["EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"]


def test_planted_pii_zero_leaks(planted):
    ts, clean, rep, ev = planted
    assert ev["with_pii"] >= 30 and ev["paragraphs"] - ev["with_pii"] >= 10
    assert ev["leaks"] == []
    assert ev["false_replacements_negatives"] == []
    print(f"planted {ev['planted']} values in {ev['with_pii']} paragraphs; leaks 0; "
          f"false replacements on negatives {len(ev['false_replacements_negatives'])}; precision {ev['precision']:.3f}")
    for x, c in zip(ts, clean):
        if not x["pii"]: assert c == x["text"]                 # negatives come out unchanged


def test_text_outside_spans_is_unchanged(planted):
    ts, clean, rep, _ = planted
    for x, c, rs in zip(ts, clean, rep):
        t, pos, npos = x["text"], 0, 0
        for r in rs:
            assert c[npos:r["new_start"]] == t[pos:r["start"]]
            assert c[r["new_start"]:r["new_end"]] == r["replacement"] != t[r["start"]:r["end"]]
            pos, npos = r["end"], r["new_end"]
        assert c[npos:] == t[pos:]
        assert "original" not in json.dumps(rs)                  # the report never stores the original value


def test_held_out_paragraphs():
    "Paragraphs written after the rules were tuned on pii_testset (a check against over-fitting)."
    H = lambda text, *pii: {"text": text, "pii": list(pii)}
    hold = [
        H("Beatriz Costa Almeida, 38, a dental hygienist, lives at 64 Birchwood Lane, Portland, OR 97205 and texts friends from 503-555-0147.",
          ("PERSON", "Beatriz Costa Almeida"), ("STREET_ADDRESS", "64 Birchwood Lane"), ("POSTCODE", "97205"), ("PHONE_NUMBER", "503-555-0147")),
        H("Contact Mr Oliver Pennington via oliver.pennington@btinternet.com or 07911 123456 about the allotment.",
          ("PERSON", "Mr Oliver Pennington"), ("EMAIL_ADDRESS", "oliver.pennington@btinternet.com"), ("PHONE_NUMBER", "07911 123456")),
        H("Tomasz Wiśniewski pays for his gym with card 4716-2210-4478-9013.", ("PERSON", "Tomasz Wiśniewski"), ("CREDIT_CARD", "4716-2210-4478-9013")),
        H("Dear neighbours, Hiroshi Tanaka and Yuki Tanaka of 19 Linden Avenue invite you to a barbecue.",
          ("PERSON", "Hiroshi Tanaka"), ("PERSON", "Yuki Tanaka"), ("STREET_ADDRESS", "19 Linden Avenue")),
        H("The user banks at IBAN NL91 ABNA 0417 1643 00 and lives at Flat 12, 3 Station Road, Reading RG1 1LX.",
          ("IBAN_CODE", "NL91 ABNA 0417 1643 00"), ("STREET_ADDRESS", "Flat 12, 3 Station Road"), ("POSTCODE", "RG1 1LX")),
        H("Ngozi Okonkwo-Eze (ngozi.eze@gmail.com) moderates a book club and her phone is +234 803 555 0192.",
          ("PERSON", "Ngozi Okonkwo-Eze"), ("EMAIL_ADDRESS", "ngozi.eze@gmail.com"), ("PHONE_NUMBER", "+234 803 555 0192")),
        H("He spent Christmas 2020 in Georgia and New Year in Florida, aged 60."),
        H("She bought 2 kg of apples for £3.50 at the market on Church Street."),
    ]
    assert P.luhn_ok("4716-2210-4478-9013") and P.iban_ok("NL91 ABNA 0417 1643 00")
    clean, rep = P.deidentify([h["text"] for h in hold])
    ev = P.evaluate_deid(hold, clean, rep)
    assert ev["leaks"] == [] and ev["false_replacements_negatives"] == []


def test_checksums_against_brute_force():
    def luhn_ref(s):  # textbook right-to-left doubling
        d = [int(c) for c in s if c.isdigit()][::-1]
        return sum(x if i % 2 == 0 else (2 * x - 9 if 2 * x > 9 else 2 * x) for i, x in enumerate(d)) % 10 == 0
    rng = random.Random(0)
    for _ in range(2000):
        s = "".join(str(rng.randrange(10)) for _ in range(rng.choice([13, 15, 16, 19])))
        assert P.luhn_ok(s) == luhn_ref(s)
    for k in range(50):  # replacements are valid and keep the format
        assert P.luhn_ok(P.fake_value("CREDIT_CARD", "5555-5555-5555-4444", k))
        assert P.iban_ok(P.fake_value("IBAN_CODE", "FR14 2004 1010 0505 0001 3M02 606", k))


def test_llm_layer_and_failures():
    from popalign.llm import ScriptedLLM   # the test double: prompts arrive rendered with its chat template
    def fn(p, seed):
        if "Does the following persona" in p: return "yes" if "Quillon" in p else "No."
        return '{"spans": [{"text": "Quillon", "type": "PERSON"}]}'
    llm = ScriptedLLM(responses=fn)
    c, r = P.deidentify(["Everyone calls him Quillon at work.", "He likes tea."], llm=llm)
    assert "Quillon" not in c[0] and c[1] == "He likes tea." and r.summary["llm_flagged"] == 1
    assert all(p.startswith("<|im_start|>") for _, p in llm.calls)
    c, r = P.deidentify(["He likes tea."], llm=ScriptedLLM(responses=lambda p, s: "perhaps"), retries=1)
    assert r.summary["llm_detect_failed"] == 1 and c == ["He likes tea."]


def test_deid_cli_evidence_and_resume(tmp_path):
    ts = P.pii_testset()
    pers = pd.DataFrame({"id": ["a"], "text": [ts[2]["text"]], "evidence": [["call me on +44 7700 900123"]], "source_text": ["raw"]})
    inp = save_artifact(pers, tmp_path / "p.jsonl")
    out, summ = P.deid_cli(inp, tmp_path / "d.parquet", verbose=False)
    df, prov = load_artifact(out)
    assert "source_text" not in df and "Priya" not in df.text.iloc[0] and "900123" not in df.evidence.iloc[0][0]
    assert prov["deid_summary"]["replacements"] == 4 and summ["evidence_replacements"] == 1
    m = out.stat().st_mtime_ns
    P.deid_cli(inp, tmp_path / "d.parquet", verbose=False)
    assert out.stat().st_mtime_ns == m
