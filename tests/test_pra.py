"""The response adapter on the real embedded model: a smoke training (loss falls, sensitivity on held-out shipped pairs
rises), answers from stored states equal `respond` with the adapter, and the command line's help and errors."""
import subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd
import pytest, torch

from popalign.adapter import Adapter, ResponseHead, save_adapter, base_identity, load_adapter
from popalign.instruments import load_instrument
from popalign import pra, pra_data, pra_eval

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def llm():
    from popalign.llm import TransformersLLM
    return TransformersLLM(None, adapter=None, cache=False)


def _e_personas(m, grades=(-3, -2, 2, 3)):
    "One-sentence extraversion personas from the training material, each with answers of a person at that grade."
    ins = load_instrument("bfi25"); rows = []
    for g in grades:
        for k, s in enumerate(m["traits"]["E"][g]):
            sex = "female" if k % 2 else "male"
            who = m["frames"][k % len(m["frames"])].format(name=m["names"][sex][k], age=30 + k, job="a baker", place=m["places"][k])
            ans = np.full(len(ins.items), np.nan)
            for it in ins.trait_items("E"):
                ans[ins.item_ids.index(it)] = np.clip(3.5 + 0.8 * g * ins.item(it).sign, 1, 6)
            rows.append(dict(person=len(rows), persona=f"{who} {s.format(**pra_data.PRONOUNS[sex])}", described="E",
                             **{f"grade_{t}": (g if t == "E" else 0) for t in ins.traits}, answers=ans))
    tab = pd.DataFrame(rows); tab["items"] = [ins.trait_items("E")] * len(tab)
    return tab, ins


def test_smoke_training_loss_falls_and_sensitivity_rises(llm, tmp_path):
    "≤ 2 min: 20 single-sentence personas train a head; 6 shipped E pairs (never trained on) move toward their key."
    from popalign.validity import sensitivity_pairs
    tab, ins = _e_personas(pra_data.load_behaviours())
    st = pra_data.extract_states(llm, tab, ins, tmp_path/"train", verbose=False)
    cfg = pra.PRAConfig(layers=(18, 22, 26), rank=4, dropout=0.1, steps=150, lr=3e-3, batch_following=12, curriculum_steps=0,
                        w_individual=0, w_dist=0, eval_every=50, seed=0)
    humans = pd.DataFrame(np.full((50, len(ins.items)), 3.0), columns=ins.item_ids)
    tr = pra.HeadTrainer(cfg, {"following": pra.StateData(st, tab, ins, cfg.layers)}, humans, ins)
    tr.f_train, tr.f_val = tr.parts["following"].personas, tr.parts["following"].personas   # tiny: validate on training set
    before = tr.validate()["val_ce"]
    after = pra.fit(tr, verbose=False)["history"][-1]["val_ce"]
    assert after < before - 0.3, (before, after)
    P = sensitivity_pairs(trait="E").iloc[:6]
    ptab = pd.DataFrame({"persona": [x for h, l in zip(P.persona_high, P.persona_low) for x in (h, l)]})
    ptab["items"] = [ins.trait_items("E")] * len(ptab)
    pst = pra_data.extract_states(llm, ptab, ins, tmp_path/"pairs", verbose=False)
    ad = Adapter(tmp_path, "head", dict(config=dict(layers=list(cfg.layers))), "test", tr.head)
    sep = {}
    for name, a in (("base", None), ("adapted", ad)):
        S = pra_eval.responses_from_states(pst, ptab, ins, a).scores()["E"].to_numpy()
        sep[name] = S[0::2] - S[1::2]                        # high − low per pair
    assert (sep["adapted"] > 0).mean() >= 5 / 6 and sep["adapted"].mean() > sep["base"].mean() + 0.5, sep


def test_states_equal_respond_with_adapter(llm, tmp_path):
    "The adapter applied to stored states gives exactly what respond gives through TransformersLLM(adapter=…)."
    from popalign.respond import respond
    torch.manual_seed(0)
    layers = [14, 30]
    h = ResponseHead(len(layers) * llm.hidden_size, rank=3).standardize_from(torch.randn(50, len(layers) * llm.hidden_size))
    with torch.no_grad():
        for p in h.parameters(): p.add_(torch.randn_like(p) * 0.05)
    path = save_adapter(tmp_path/"ad", "head", base_identity(llm), dict(layers=layers), head=h)
    texts, ins = ["Mia is a loud, cheerful party host.", "Olaf is a quiet archivist who avoids crowds."], load_instrument("bfi25")
    via_states = pra_eval.state_responder(llm, path)(texts, ins, ["E1", "E2", "A3"])
    via_respond = respond(texts, ins, pra_eval.with_adapter(llm, path), items=["E1", "E2", "A3"])
    np.testing.assert_allclose(via_states.probs[:, [10, 11, 2]], via_respond.probs, atol=2e-5)
    base = respond(texts, ins, llm, items=["E1", "E2", "A3"])
    assert np.abs(via_respond.probs - base.probs).max() > 1e-3      # the head changes the answers
    np.testing.assert_allclose(via_respond.valid_mass, base.valid_mass, atol=1e-6)   # and keeps the mass on the options


def test_adapter_for_another_base_model_is_refused(llm, tmp_path):
    h = ResponseHead(2 * llm.hidden_size, rank=2)
    p = save_adapter(tmp_path/"other", "head", dict(base_identity(llm), model_id="another-model@x"), dict(layers=[1, 2]), head=h)
    with pytest.raises(ValueError, match="trained for base model 'another-model@x'"): load_adapter(p, llm)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "popalign.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_help_and_errors(tmp_path):
    r = _cli("pra", "--help"); assert r.returncode == 0 and "train" in r.stdout and "eval" in r.stdout and "--set" in r.stdout
    r = _cli("pra", "train", "--set", "stepz=3", "--out", str(tmp_path/"a"))
    assert r.returncode == 2 and "stepz" in r.stderr, r.stderr
    r = _cli("pra", "eval", str(tmp_path/"missing"))
    assert r.returncode == 2 and str(tmp_path/"missing") in r.stderr, r.stderr


def test_head_reshapes_persona_scales_only(llm):
    "The shipped head changes Likert answers; word options, `without_adapter()` and closed judgements (`choose`) stay base."
    from popalign.respond import role_play_prompts
    from popalign.ask import choose
    ad = pra_eval.with_adapter(llm, "default")
    ins = load_instrument("ipip50")
    ps = role_play_prompts(llm, ["Maya, 41, is the loudest voice at every party and loves meeting strangers."], ins, ins.item_ids[:4])
    num = [str(o) for o in ins.options]
    assert np.abs(ad.option_logprobs(ps, num) - llm.option_logprobs(ps, num)).max() > 1e-2
    for opts in (["yes", "no"], ["Agree", "Disagree"]):
        np.testing.assert_allclose(ad.option_logprobs(ps, opts), llm.option_logprobs(ps, opts), atol=1e-6)
    np.testing.assert_allclose(ad.without_adapter().option_logprobs(ps, num), llm.option_logprobs(ps, num), atol=1e-6)
    scores = [str(i) for i in range(1, 11)]
    q = ["How well written is this persona, from 1 to 10? 'Maya runs a bakery.'"]
    np.testing.assert_allclose(choose(ad, q, scores, prefill="Score: ")[1], choose(llm, q, scores, prefill="Score: ")[1], atol=1e-6)
