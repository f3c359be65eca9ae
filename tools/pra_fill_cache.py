"""Fill the LLM response cache for `nbs/paper/tab_pra.ipynb` and `popalign demo` on a faster machine.

The PRA table asks about 60,000 persona × item prompts of three models (base, adapted, trap); on 2 CPU cores that is
hours. This tool splits the work:

    python tools/pra_fill_cache.py jobs  JOBS.json.gz                # here: the exact prompts the notebook and demo ask
    python tools/pra_fill_cache.py fill  JOBS.json.gz ADAPTER…       # on a GPU: score them, base and through each adapter
    python tools/pra_fill_cache.py merge OTHER.sqlite                # here: copy the entries into this cache

`jobs` renders the prompts through `respond` itself (a copy of the LLM whose option_logprobs records instead of
scoring), so prompts, truncation and options are those the notebook will ask. `fill` scores with TransformersLLM in
float32 (the dtype is part of every cache key, as is the adapter's content hash), so the entries are the ones the CPU
run would write, up to float rounding. Nothing here changes a result: a prompt missing from the cache is computed.
"""
import argparse, copy, gzip, json, sqlite3, sys, time
from pathlib import Path

import numpy as np


def _recorder(llm, jobs):
    rec = copy.copy(llm); rec.cache = None
    def option_logprobs(prompts, options):
        jobs.append(dict(prompts=list(prompts), options=list(options)))
        return np.full((len(prompts), len(options)), -np.log(len(options)))
    rec.option_logprobs = option_logprobs
    return rec


def make_jobs(out, n_pool=120, n_pairs_per_trait=30, seed=0, demo_n=60, demo_seed=0):
    from popalign.core import spawn_seeds
    from popalign.instruments import load_instrument
    from popalign.reference import load_reference
    from popalign.llm import TransformersLLM
    from popalign.respond import respond
    from popalign.validity import persona_sensitivity
    from popalign.demo import demo_pool
    from popalign import pra_data, pra_eval
    llm = TransformersLLM(None, adapter=None, cache=False)
    jobs = []; rec = _recorder(llm, jobs)
    s_sens, s_ind, s_pop, s_floor = spawn_seeds(seed, 4)          # as tab_pra
    ins = load_instrument("ipip50")
    persona_sensitivity(rec, ins, n_per_trait=n_pairs_per_trait, seed=s_sens, reps=10, verbose=False)
    respond(pra_data.sentences1_table("test", None).persona.tolist(), ins, rec)
    pool = pra_data.itemsgen_table("eval", n_pool, None, seed).persona.tolist()
    for i in (ins, pra_eval.reversed_scale(ins), load_reference("cfcs").instrument, load_reference("grit").instrument):
        respond(pool, i, rec)
    s_pool = spawn_seeds(demo_seed, 4)[0]                          # as run_demo
    respond(demo_pool(demo_n, seed=s_pool), load_reference("big5").instrument, rec)
    n = sum(len(j["prompts"]) for j in jobs)
    check = jobs[0]["prompts"][:24]        # scored here, so `fill` can show how far its numbers are from this machine's
    lp = llm.option_logprobs(check, jobs[0]["options"]).tolist()
    with gzip.open(out, "wt") as f: json.dump(dict(model=llm.model_id, jobs=jobs, check=dict(prompts=check, lp=lp)), f)
    print(f"{len(jobs)} jobs, {n:,} prompts → {out}")


def fill(jobs_file, adapters, device="cuda", dtype="float32", export=None):
    import torch
    from popalign.llm import TransformersLLM
    from popalign import pra_eval
    d = json.load(gzip.open(jobs_file, "rt"))
    llm = TransformersLLM(None, adapter=None, device=device, dtype=dtype, convert_cache=False)
    if llm.model_id != d["model"]: sys.exit(f"model {llm.model_id} is not the one the jobs were made for ({d['model']})")
    c = d["check"]
    dev = np.abs(np.array(llm.option_logprobs(c["prompts"], d["jobs"][0]["options"])) - np.array(c["lp"])).max()
    print(f"{llm.device} {dtype} vs the jobs machine on {len(c['prompts'])} prompts: max |Δ log p| = {dev:.2e}", flush=True)
    views = [llm] + [pra_eval.with_adapter(llm, a) for a in adapters]
    n = sum(len(j["prompts"]) for j in d["jobs"])
    for v in views:
        t0 = time.time()
        for j in d["jobs"]: v.option_logprobs(j["prompts"], j["options"])
        if device.startswith("cuda"): torch.cuda.synchronize()
        print(f"{getattr(v.adapter, 'hash', 'base')}: {n:,} prompts in {time.time() - t0:.1f} s on {llm.device} ({dtype})", flush=True)
    print("cache:", llm.cache.path)
    if export:
        sqlite3.connect(str(llm.cache.path)).execute("VACUUM INTO ?", (str(export),))
        print("exported to", export, f"({Path(export).stat().st_size / 1e6:.1f} MB)")


def merge(other):
    from popalign.llm import ResponseCache
    c = ResponseCache()
    con = sqlite3.connect(str(c.path)); con.execute("ATTACH DATABASE ? AS o", (str(other),))
    before = con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    con.execute("INSERT OR IGNORE INTO responses SELECT * FROM o.responses"); con.commit()
    after = con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    print(f"{after - before:,} entries added to {c.path} ({after:,} in all)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("jobs", help="record the prompts tab_pra and the demo ask"); j.add_argument("out")
    j.add_argument("--n-pool", type=int, default=120); j.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fill", help="score the recorded prompts, base and through each adapter, into the cache")
    f.add_argument("jobs"); f.add_argument("adapters", nargs="*"); f.add_argument("--device", default="cuda"); f.add_argument("--dtype", default="float32")
    f.add_argument("--export", help="write a compact copy of the cache here")
    m = sub.add_parser("merge", help="copy another cache's entries into this one"); m.add_argument("other")
    a = ap.parse_args()
    if a.cmd == "jobs": make_jobs(a.out, a.n_pool, seed=a.seed)
    elif a.cmd == "fill": fill(a.jobs, a.adapters, a.device, a.dtype, a.export)
    else: merge(a.other)
