"Corpus readers, the mining chain with a scripted LLM, resumability, critic and importer CLIs."
import json, zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from popalign.llm import ScriptedLLM
from popalign.core import has_data, load_artifact, save_artifact, text_hash
from popalign import mine as M, readers as RD, prompts as PR
from popalign.critic import critic_cli, DIMENSIONS
from popalign.importers import import_cli, read_personas, _toy_persona_files


def scripted(fn):
    "The project's test double: `fn(prompt, seed)` answers prompts rendered with the scripted backend's chat template."
    return ScriptedLLM(responses=fn)


def _blog_dir(d: Path) -> Path:
    b = d / "blogs"; b.mkdir()
    for name, raw in RD.toy_blog_files().items(): (b / name).write_bytes(raw)
    return b


def test_blog_zip_with_defects(tmp_path):
    zp = tmp_path / "blogs.zip"
    files = RD.toy_blog_files()
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, raw in files.items(): z.writestr(f"blogs/{name}", raw)
        noise = "".join(np.random.default_rng(1).choice(list("abcdefgh ijklm"), 4000))
        z.writestr("blogs/9.male.30.Arts.Leo.xml", f"<Blog><date>1,May,2004</date><post>{noise}</post></Blog>".encode())
    data = bytearray(zp.read_bytes())
    k = data.find(b"9.male.30.Arts.Leo.xml") + len(b"9.male.30.Arts.Leo.xml") + 50
    data[k] ^= 0xFF
    zp.write_bytes(bytes(data))
    df = RD.read_blog_corpus(zp)
    folder = RD.read_blog_corpus(_blog_dir(tmp_path))
    assert df.text.tolist() == folder.text.tolist()          # zip and folder read the same posts
    assert df.attrs["skipped"] == {"undecodable file": 1, "bad file name": 1, "empty post": 1, "unclosed post": 1,
                                   "corrupt zip member": 1}
    files_skipped = {(f["file"], f["reason"]) for f in df.attrs["skipped_files"]}
    assert ("9.male.30.Arts.Leo.xml", "corrupt zip member") in files_skipped
    assert ("3423.male.24.Student.Aries.xml", "unclosed post") in files_skipped
    assert list(df.columns[:8]) == ["author_id", "segment_id", "gender", "age", "industry", "sign", "date", "text"]
    assert "café" in df.text.iloc[0]                           # latin-1 decoded


def toy_answer(prompt, seed):
    return M._toy_llm_answer(prompt, seed)


def test_mine_cli_end_to_end_and_resume(tmp_path):
    b = _blog_dir(tmp_path)
    llm = scripted(toy_answer)
    out, funnel = M.mine_cli(b, tmp_path / "personas.parquet", llm=llm, min_tokens=20, min_posts=1, verbose=False)
    df, prov = load_artifact(out)
    assert df.id.tolist() == ["blog:1000331"]
    assert prov["prompt_hashes"] == {k: text_hash(PR.PROMPTS[k]) for k in ("clean", "quality", "persona")}
    assert prov["reader_skipped"]["undecodable file"] == 1
    steps = [r["step"] for r in prov["funnel"]]
    assert steps[:2] == ["read", "rule_clean"] and steps[-1] == "evidence"
    fr = funnel.df
    assert (fr["in"] - fr["out"] == fr["dropped"]).all()
    assert list(df.evidence.iloc[0]) and min(df.evidence_scores.iloc[0]) >= 90
    n = len(llm.calls)
    M.mine_cli(b, tmp_path / "personas.parquet", llm=llm, min_tokens=20, min_posts=1, verbose=False)
    assert len(llm.calls) == n                                  # same arguments: no new LLM call, file kept
    with pytest.raises(ValueError, match="Unknown mine option"):
        M.mine_cli(b, tmp_path / "x.parquet", llm=llm, min_tokenz=3)


def test_unparsable_answers_are_retried_then_counted(tmp_path):
    segs = RD.read_blog_corpus(_blog_dir(tmp_path))
    seen = []
    def bad_quality(p, seed):
        if "You are annotating" in p:
            seen.append(seed); return "high quality, harmless"   # no tags: never parses
        return toy_answer(p, seed)
    with pytest.raises(M.EmptyResultError, match="quality_parse"):
        M.mine(segs, scripted(bad_quality), min_tokens=20, min_posts=1, retries=2, llm_clean=False)
    n = seen.count(None)                                         # the greedy first try (no seed), one per segment
    assert n > 0 and len(seen) == 3 * n                          # + 2 retries each
    assert len(set(s for s in seen if s is not None)) > n        # sampled with seeds that differ between attempts


def test_empty_result_names_the_filter(tmp_path):
    segs = RD.read_blog_corpus(_blog_dir(tmp_path))
    with pytest.raises(M.EmptyResultError, match="Step 'min_tokens' removed all"):
        M.prefilter(segs, min_tokens=10_000)
    with pytest.raises(M.EmptyResultError, match="first_person"):
        M.prefilter(segs.assign(text="He went there and she came back " * 10), min_tokens=5)


@pytest.mark.skipif(not has_data("openpsychometrics/itemsgen/data.csv"), reason="shared openpsychometrics data absent")
def test_itemsgen_deterministic_chain(tmp_path):
    out, funnel = M.mine_cli(None, tmp_path / "authors.jsonl", source="itemsgen", deterministic_only=True, verbose=False)
    recs, prov = load_artifact(out)
    fr = funnel.df.set_index("step")
    assert fr.loc["read", "in"] == 8166
    assert fr.loc["min_posts", "out"] == len(recs) > 2000
    assert all(r["n_posts"] == 3 for r in recs)
    assert prov["params"]["min_posts"] == 3 and prov["params"]["dedup_scope"] == "author"


@pytest.mark.skipif(not has_data("openpsychometrics/SENTANCES1/data1.csv"), reason="shared openpsychometrics data absent")
def test_sentences1_reader():
    s = RD.read_sentences1()
    assert set(s.stem) == {"S1", "S2", "S3", "S4", "S5", "S6"}
    assert s.text.str.contains(r"\b(?:I|me|my)\b").all()
    assert s[RD.TRAIT_COLUMNS].notna().all().all()


def test_critic_cli(tmp_path):
    pers = pd.DataFrame({"id": ["a", "b"], "text": ["The user teaches math.", "The user lives in Paris."],
                         "source_text": ["I teach math.", "I teach math."]})
    def critic(p, seed):
        s = {d: {"score": 9, "reason": "ok"} for d in DIMENSIONS}
        if "Paris" in p.split("Persona:")[1]: s["hallucination"] = {"score": 2, "reason": "invented"}
        return json.dumps(s)
    out, rep = critic_cli(save_artifact(pers, tmp_path / "p.jsonl"), tmp_path / "k.parquet", scripted(critic), verbose=False)
    df, prov = load_artifact(out)
    assert df.id.tolist() == ["a"] and rep["filtered_fraction"] == 0.5
    assert df.reason_overall.iloc[0] == "ok" and prov["prompt_hashes"]["critic"] == text_hash(PR.PROMPTS["critic"])


def test_import_cli_layouts(tmp_path):
    files = _toy_persona_files(tmp_path / "in")
    layouts = {k: import_cli(p, tmp_path / f"{k}.jsonl")[1]["layout"] for k, p in files.items()}
    assert layouts == {"personahub": "personahub", "nemotron": "nemotron", "tulu": "tulu", "generic": "generic"}
    nem = read_personas(files["nemotron"])
    assert {"sex", "age", "occupation"} <= set(nem.columns)


def test_with_popalign_llm_scripted_backend(tmp_path):
    "The chain runs on popalign.llm's scripted backend (chat-template rendering, derived seeds, describe())."
    llm_mod = pytest.importorskip("popalign.llm")
    def fn(prompt, seed):
        if "You are cleaning" in prompt: return "<clean>" + prompt.split('"""')[1].strip() + "</clean>"
        if "You are annotating" in prompt: return "<quality>high</quality><harmless>yes</harmless>"
        if "Below are texts" in prompt:
            words = prompt.split('"""')[1].split()
            return json.dumps({"persona": "The user writes about daily life.", "evidence": [" ".join(words[:8])]})
        return ""
    llm = llm_mod.load_llm("scripted", responses=fn)
    out, funnel = M.mine_cli(_blog_dir(tmp_path), tmp_path / "p.jsonl", llm=llm, min_tokens=20, min_posts=1, verbose=False)
    recs, prov = load_artifact(out)
    assert len(recs) == 2 and '"backend": "scripted"' in prov["llm"]
    assert any("<|im_start|>" in p for _, p in llm.calls)   # prompts went through the chat template


def test_choice_answers_mine_then_critic_then_deid(tmp_path):
    "answer='choice' through mine_cli → critic_cli → deid_cli on popalign.llm's scripted backend; re-runs cost no LLM call."
    llm_mod = pytest.importorskip("popalign.llm")
    from popalign.privacy import deid_cli
    def gen(prompt, seed):
        if "You are cleaning" in prompt: return "<clean>" + prompt.split('"""')[1].strip() + "</clean>"
        if "Below are texts" in prompt:
            words = prompt.split('"""')[1].split()
            return json.dumps({"persona": "The user writes about daily life.", "evidence": [" ".join(words[:8])]})
        return ""
    def lp(prompt, options):
        body = prompt.split('"""')[1]
        if options[0].startswith(" high"):        # quality tags: the café author's posts are 'low'
            want = (" low" if "café" in body else " medium") + "\nHarmless: yes"
            return [-0.1 if o == want else -4.0 for o in options]
        if options[0] == "1/":                    # critic: every score 8, hallucination 9
            s = 9 if "on hallucination" in prompt else 8
            return [-0.2 if o == f"{s}/" else -5.0 for o in options]
        return [-0.1 if o == " no" else -3.0 for o in options]   # PII detector: nothing to report
    llm = llm_mod.load_llm("scripted", responses=gen, logprobs=lp)
    out, funnel = M.mine_cli(_blog_dir(tmp_path), tmp_path / "p.jsonl", llm=llm, min_tokens=20, min_posts=1,
                             keep_quality=("high", "medium"), answer="choice", verbose=False)
    fr = funnel.df.set_index("step")
    assert fr.loc["quality", "dropped"] >= 1 and fr.loc["quality_parse", "dropped"] == 0
    recs, prov = load_artifact(out)
    assert recs and not any("café" in r["source_text"] for r in recs)
    assert prov["prompt_hashes"]["quality_choice"] == text_hash(PR.PROMPTS["quality_choice"])   # the prompt that was asked
    kept, rep = critic_cli(out, tmp_path / "k.jsonl", llm, answer="choice", verbose=False)
    assert rep["answer"] == "choice" and rep["kept"] == len(recs) and rep["mean_scores"]["hallucination"] == 9
    n = len(llm.calls)
    critic_cli(out, tmp_path / "k.jsonl", llm, answer="choice", verbose=False)
    assert len(llm.calls) == n                                   # done before: no new call
    strict, rep8 = critic_cli(out, tmp_path / "k9.jsonl", llm, answer="choice", min_overall=9, verbose=False)
    assert rep8["kept"] == 0 and rep8["failed_by"] == {"overall < 9": len(recs)}
    d, summary = deid_cli(kept, tmp_path / "d.jsonl", llm=llm, answer="choice", verbose=False)
    assert summary["llm_flagged"] == 0 and summary["llm_detect_failed"] == 0
