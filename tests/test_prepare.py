"""``python -m benchmarks prepare`` on small synthetic files written in the real formats.

Clinical: GDC BCR Biotab patient TSV (three header rows) and cBioPortal data_clinical_patient.txt
(four ``#`` lines). Expression: cBioPortal RSEM (Hugo_Symbol, Entrez_Gene_Id, 15-character sample
barcodes) and GDC/Firehose RSEM (Hybridization REF, full barcodes, a ``normalized_count`` row,
SYMBOL|ENTREZ ids). Features: TRIDENT-style .h5 and CLAM .pt named by slide barcode.
"""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.data.errors import DataError
from benchmarks.prepare import RS_GENES, class_counts, odx_labels, prepare, recurrence_score

REF_GENES = ["ACTB", "GAPDH", "GUSB", "RPLP0", "TFRC"]
OTHER_GENES = ["TP53", "GATA3", "XIST"]
# case -> (ER, PR, HER2 IHC status, HER2 IHC score, HER2 FISH, expected HER2, expected PR)
CLIN = {
    1: ("Positive", "Positive", "Positive", "3+", "[Not Evaluated]", "positive", "positive"),
    2: ("Positive", "Positive", "Equivocal", "2+", "Positive", "positive", "positive"),
    3: ("Positive", "Negative", "Equivocal", "2+", "Negative", "negative", "negative"),
    4: ("Positive", "Positive", "Equivocal", "2+", "[Not Evaluated]", None, "positive"),
    5: ("Negative", "Negative", "Negative", "1+", "[Not Evaluated]", "negative", "negative"),
    6: ("Negative", "Indeterminate", "Negative", "0", "", "negative", None),
    7: ("Positive", "Positive", "Positive", "3+", "Negative", "positive", "positive"),  # IHC 3+ wins
    8: ("Positive", "Positive", "Negative", "1+", "Positive", "positive", "positive"),  # FISH positive wins
    9: ("[Not Evaluated]", "[Not Evaluated]", "[Not Evaluated]", "[Not Available]", "[Not Available]", None, None),
    10: ("Positive", "Positive", "Negative", "[Not Available]", "[Not Available]", "negative", "positive"),
    11: ("Positive", "Positive", "[Not Available]", "", "Negative", "negative", "positive"),  # FISH only
    12: ("Negative", "Positive", "Negative", "1+", "", "negative", "positive"),
}


def case(i: int) -> str:
    return f"TCGA-E2-A{i:03d}"


def slide(i: int, dx: int = 1) -> str:
    return f"{case(i)}-01Z-00-DX{dx}.{i:04d}ABCD-{dx:04d}"


def _write_gdc_clinical(path, cases=CLIN, extra_rows=()):
    cols = ["bcr_patient_uuid", "bcr_patient_barcode", "er_status_by_ihc", "pr_status_by_ihc",
            "her2_status_by_ihc", "her2_ihc_score", "her2_fish_status"]
    lines = ["\t".join(cols), "\t".join(cols), "\t".join(["CDE_ID:"] + [f"CDE_ID:{2000 + k}" for k in range(6)])]
    for i, v in cases.items():
        lines.append("\t".join([f"uuid-{i}", case(i), *v[:5]]))
    lines += ["\t".join(r) for r in extra_rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_cbio_clinical(path, cases=CLIN):
    cols = ["PATIENT_ID", "ER_STATUS_BY_IHC", "PR_STATUS_BY_IHC", "IHC_HER2", "HER2_FISH_STATUS"]
    lines = ["#Patient Identifier\tER Status By IHC\tPR status by ihc\tIHC-HER2\tHER2 fish status",
             "#Patient identifier\tER status\tPR status\tHER2 IHC status\tHER2 FISH status",
             "#STRING\tSTRING\tSTRING\tSTRING\tSTRING", "#1\t1\t1\t1\t1", "\t".join(cols)]
    for i, (er, pr, ihc, _score, fish, *_rest) in cases.items():
        lines.append("\t".join([case(i), er, pr, ihc, fish]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _expression(seed=0, cases=tuple(CLIN)):
    """Raw counts, genes x samples: a tumour sample per case + a normal sample of case 1."""
    rng = np.random.default_rng(seed)
    genes = list(RS_GENES) + REF_GENES + OTHER_GENES
    samples = [f"{case(i)}-01" for i in cases] + [f"{case(1)}-11"]
    raw = pd.DataFrame(rng.integers(0, 5000, size=(len(genes), len(samples))).astype(float), index=genes,
                       columns=samples)
    return raw


def _write_cbio_expression(path, raw, rename=None):
    df = raw.rename(index=rename or {}).copy()
    df.insert(0, "Entrez_Gene_Id", np.arange(len(df)) + 100)
    df.index.name = "Hugo_Symbol"
    df.to_csv(path, sep="\t")
    return path


def _write_features(d, cases=tuple(CLIN), two_slides=(3,), pt=(5,), empty=()):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = []
    for i in cases:
        for dx in ((1, 2) if i in two_slides else (1,)):
            sid = slide(i, dx)
            n = 0 if sid in empty else 6
            f = rng.normal(size=(n, 8)).astype(np.float32)
            if i in pt:
                torch.save(torch.from_numpy(f), d / f"{sid}.pt")
            else:
                with h5py.File(d / f"{sid}.h5", "w") as h:
                    h["features"] = f
                    h["coords"] = (np.arange(2 * n).reshape(n, 2) * 256).astype(np.int64)
            names.append(sid)
    return names


def _reference_rs(raw_tumour: pd.DataFrame) -> pd.Series:
    """Independent RS: Paik et al. 2004 formula on log2(x+1), genes rescaled 0..15 (genefu)."""
    x = np.log2(raw_tumour + 1.0)
    s = {g: (x.loc[g] - x.loc[g].min()) / (x.loc[g].max() - x.loc[g].min()) * 15 for g in RS_GENES}
    out = {}
    for c in x.columns:
        v = {g: s[g][c] for g in s}
        grb7 = max(8.0, 0.9 * v["GRB7"] + 0.1 * v["ERBB2"])
        er = (0.8 * v["ESR1"] + 1.2 * v["PGR"] + v["BCL2"] + v["SCUBE2"]) / 4
        pro = max(6.5, (v["BIRC5"] + v["MKI67"] + v["MYBL2"] + v["CCNB1"] + v["AURKA"]) / 5)
        inv = (v["CTSL2"] + v["MMP11"]) / 2
        rsu = 0.47 * grb7 - 0.34 * er + 1.04 * pro + 0.1 * inv + 0.05 * v["CD68"] - 0.08 * v["GSTM1"] - 0.07 * v["BAG1"]
        out[c[:12]] = min(100.0, max(0.0, 20 * (rsu - 6.7)))
    return pd.Series(out)


@pytest.fixture
def world(tmp_path):
    raw = _expression()
    return {"raw": raw, "features": tmp_path / "feats", "slides": _write_features(tmp_path / "feats"),
            "gdc": _write_gdc_clinical(tmp_path / "nationwidechildrens.org_clinical_patient_brca.txt"),
            "cbio": _write_cbio_clinical(tmp_path / "data_clinical_patient.txt"),
            "expr": _write_cbio_expression(tmp_path / "data_mrna_seq_v2_rsem.txt", raw, {"CTSL2": "CTSV"}),
            "tmp": tmp_path}


# ----------------------------------------------------------------------------------------------
# the formula and the rules, on hand-derived values
# ----------------------------------------------------------------------------------------------
def test_recurrence_score_matches_hand_computed_values():
    # log2(x+1) = 0, 15, 6, 8 for every gene -> rescaled 0, 15, 6, 8 (min 0, max 15)
    raw = pd.DataFrame({g: [0.0, 2**15 - 1, 63.0, 255.0] for g in RS_GENES}, index=["a", "b", "c", "d"])
    rs = recurrence_score(np.log2(raw + 1))
    # a: GRB7g floor 8, ERg 0, prolif floor 6.5: RSU = 3.76 + 6.76 = 10.52 -> 20 x 3.82
    # b: every group 15: RSU = 15 x 1.17 = 17.55 -> clipped to 100
    # c: 3.76 - 2.04 + 6.76 + 0.6 + 0.3 - 0.48 - 0.42 = 8.48 -> 35.6
    # d: 3.76 - 2.72 + 8.32 + 0.8 + 0.4 - 0.64 - 0.56 = 9.36 -> 53.2
    np.testing.assert_allclose(rs["rs"], [76.4, 100.0, 35.6, 53.2], atol=1e-9)
    np.testing.assert_allclose(rs["rsu"], [10.52, 17.55, 8.48, 9.36], atol=1e-9)
    np.testing.assert_allclose(rs["grb7_group"], [8, 15, 8, 8])
    np.testing.assert_allclose(rs["proliferation_group"], [6.5, 15, 6.5, 8])


def test_odx_cut_is_the_85th_percentile_of_hr_positive_her2_negative_and_applies_to_all():
    idx = [f"c{i}" for i in range(24)]
    rs = pd.Series([float(i) for i in range(20)] + [50.0, 1.0, 90.0, 95.0], index=idx)
    er = pd.Series(["positive"] * 20 + ["negative"] * 4, index=idx)
    pr = pd.Series(["negative"] * 24, index=idx)
    # HER2 unknown still counts as "not positive" (DLRS: HER2Calc != 'positive'); 22, 23 are HER2+
    her2 = pd.Series(["negative"] * 19 + [None] + ["negative"] * 2 + ["positive"] * 2, index=idx)
    lab, ref, rule = odx_labels(rs, er, pr, her2)
    assert rule.n_reference == 20 and rule.threshold == pytest.approx(0.85 * 19)  # linear interpolation
    assert lab[lab == "H"].index.tolist() == ["c17", "c18", "c19", "c20", "c22", "c23"]  # ER-/HER2+ included
    assert lab["c21"] == "L" and ref.sum() == 20
    lab2, _, rule2 = odx_labels(rs, er, pr, her2, threshold=18)  # a fixed cut: RS >= T
    assert rule2.kind == "threshold" and (lab2 == "H").sum() == 5 and lab2["c18"] == "H"  # 18, 19, 20, 22, 23


def test_counts_far_from_the_paper_warn_and_close_ones_do_not():
    m = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "her2": ["positive", "negative", "negative", None],
                      "pr": ["positive"] * 4, "odx": ["H", "L", "L", "L"]})
    close = {"her2": {"positive": 1, "negative": 2}, "pr": {"positive": 4, "negative": 0},
             "odx": {"positive": 1, "negative": 3}}
    counts, warns = class_counts(m, close, 0.2)
    assert warns == [] and counts.set_index("task").loc["HER2", "unlabelled"] == 1
    _, warns = class_counts(m, {"her2": {"positive": 141, "negative": 668}}, 0.2)
    assert len(warns) == 2 and "141" in warns[0] and "paper" in warns[0]


# ----------------------------------------------------------------------------------------------
# the whole preparation, both clinical formats
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gdc", "cbio"])
def test_whole_preparation_from_real_formats(world, fmt, capsys):
    out = world["tmp"] / "out"
    rc = main(["prepare", "--features", str(world["features"]), "--clinical", str(world[fmt]),
               "--expression", str(world["expr"]), "--out", str(out)])
    assert rc == 0
    man = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(man["slide_id"]) == sorted(world["slides"]) and len(man) == 13
    assert (man["case_id"] == man["slide_id"].str.slice(0, 12)).all()
    per_case = man.drop_duplicates("case_id").set_index("case_id")
    for i, v in CLIN.items():
        assert per_case.loc[case(i), "her2"] == (v[5] or ""), f"HER2 of case {i}"
        assert per_case.loc[case(i), "pr"] == (v[6] or ""), f"PR of case {i}"
    # ODX: independent RS on the tumour samples (the normal sample of case 1 is ignored)
    tumour = world["raw"][[f"{case(i)}-01" for i in CLIN]]
    ref_rs = _reference_rs(tumour)
    np.testing.assert_allclose(per_case["odx_rs"].astype(float).loc[ref_rs.index], ref_rs, rtol=1e-5)
    hr_her2neg = [case(i) for i in (3, 4, 10, 11, 12)]  # (ER+ or PR+) and HER2 not positive
    cut = np.percentile(ref_rs[hr_her2neg], 85)
    assert per_case["odx"].to_dict() == {c: ("H" if ref_rs[c] > cut else "L") for c in ref_rs.index}
    # omics: log2(x+1) of every gene of the tumour sample, nothing fitted (no z-scoring)
    om = pd.read_csv(out / "omics.csv", index_col="case_id")
    assert om.shape == (12, 24) and "CTSV" in om.columns
    np.testing.assert_allclose(om.loc[case(1), "TP53"], np.log2(world["raw"].loc["TP53", f"{case(1)}-01"] + 1),
                               rtol=1e-4)
    assert abs(om["TP53"].mean()) > 1  # not centred
    rep = json.loads((out / "prepare_report.json").read_text())
    assert rep["rules"]["odx"]["n_hr_pos_her2_neg"] == 5 and rep["rules"]["odx"]["rs_threshold"] == pytest.approx(cut)
    assert (out / ".gitignore").read_text().strip().endswith("*") and (out / "features").resolve() == \
        world["features"].resolve()
    text = capsys.readouterr()
    assert "paper_positive" in text.out and "141" in text.out and "668" in text.out
    assert "warning: HER2" in text.err  # 4 positive cases vs 141 in the paper

    # the run-time loaders accept the result, omics included
    from benchmarks.data.cohort import CohortSource, load_cohort
    from benchmarks.data.validate import validate_cohort
    from benchmarks.suites import load_suite

    maps = tuple((c, tuple(sorted(m.items()))) for c, m in load_suite("tcga_brca").label_maps().items())
    c = load_cohort(CohortSource(kind="files", name=f"prep-{fmt}", manifest=str(out / "manifest.csv"),
                                 features_dir=str(out / "features"), omics=str(out / "omics.csv"), label_maps=maps))
    assert c.has_omics and c.omics_dim == 24 and c.class_counts("her2") == {"positive": 4, "negative": 6,
                                                                             "unlabelled_cases": 2}
    assert validate_cohort(c.manifest, None, c.omics, need_omics=True, tasks=["her2", "pr", "odx"]) == []


def test_gdc_rsem_matrix_with_full_barcodes_and_subheader(world):
    """Firehose/GDC layout: 'Hybridization REF', SYMBOL|ENTREZ ids, a normalized_count row, aliquots."""
    raw = world["raw"].copy()
    raw[f"{case(2)}-01B-11R-A000-07"] = raw[f"{case(2)}-01"] * 3  # a second aliquot: vial A is used
    raw.columns = [c + "A-11R-A000-07" if len(c) == 15 else c for c in raw.columns]
    body = raw.copy()
    body.index = [f"{g}|{k + 1}" for k, g in enumerate(body.index)]
    path = world["tmp"] / "BRCA.rnaseqv2__RSEM_genes_normalized__data.data.txt"
    with open(path, "w") as f:
        f.write("\t".join(["Hybridization REF", *body.columns]) + "\n")
        f.write("\t".join(["gene_id"] + ["normalized_count"] * body.shape[1]) + "\n")
        body.to_csv(f, sep="\t", header=False)
    prep = prepare(world["features"], world["gdc"], path)
    assert prep.labels.loc[case(2), "expression_sample"].startswith(f"{case(2)}-01A")
    np.testing.assert_allclose(prep.omics.loc[case(2), "GRB7"], np.log2(world["raw"].loc["GRB7", f"{case(2)}-01"] + 1))
    assert any("normalized_count" in w for w in prep.warnings)


# ----------------------------------------------------------------------------------------------
# validation errors
# ----------------------------------------------------------------------------------------------
def test_missing_genes_are_listed(world, capsys):
    raw = world["raw"].drop(index=["MKI67", "CTSL2"])
    expr = _write_cbio_expression(world["tmp"] / "few_genes.txt", raw)
    rc = main(["prepare", "--features", str(world["features"]), "--clinical", str(world["gdc"]),
               "--expression", str(expr), "--out", str(world["tmp"] / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "lacks 2 of the 16" in err and "MKI67" in err and "CTSL2 (or CTSV)" in err


def test_slides_without_features_are_named(world):
    bad = slide(4)
    (world["features"] / f"{bad}.h5").unlink()
    _write_features(world["features"], cases=(4,), empty={bad})
    listed = world["tmp"] / "gdc_manifest.txt"
    listed.write_text("id\tfilename\tmd5\n" + "".join(f"u{k}\t{s}.svs\tx\n" for k, s in
                                                       enumerate(world["slides"] + ["TCGA-E2-A077-01Z-00-DX1"])))
    with pytest.raises(DataError) as e:
        prepare(world["features"], world["gdc"], world["expr"], slides=listed)
    msg = str(e.value)
    assert "slide without features" in msg and bad in msg and "TCGA-E2-A077-01Z-00-DX1" in msg
    assert {"empty_bag", "missing_file"} <= e.value.kinds
    # a slide from another encoder (dim 9, the others 8) is named; --drop-incomplete drops both
    odd = slide(7)
    with h5py.File(world["features"] / f"{odd}.h5", "w") as h:
        h["features"] = np.zeros((5, 9), np.float32)
    with pytest.raises(DataError) as e:
        prepare(world["features"], world["gdc"], world["expr"])
    assert [p.slide_id for p in e.value.problems if p.kind == "dim_mismatch"] == [odd]
    prep = prepare(world["features"], world["gdc"], world["expr"], drop_incomplete=True)
    assert {d["slide_id"] for d in prep.report["dropped_slides"]} == {bad, odd}


def test_features_without_clinical_rows_stop_or_are_dropped(world):
    _write_features(world["features"], cases=(99,))
    raw = _expression(cases=tuple(CLIN) + (99,))
    expr = _write_cbio_expression(world["tmp"] / "e99.txt", raw)
    with pytest.raises(DataError) as e:
        prepare(world["features"], world["gdc"], expr)
    assert "features without clinical rows" in str(e.value) and slide(99) in str(e.value)
    assert "--drop-incomplete" in str(e.value)
    prep = prepare(world["features"], world["gdc"], expr, drop_incomplete=True)
    assert slide(99) not in set(prep.manifest["slide_id"]) and len(prep.manifest) == 13
    assert [d["slide_id"] for d in prep.report["dropped_slides"]] == [slide(99)]


def test_cases_without_omics_are_named(world):
    raw = world["raw"].drop(columns=[f"{case(6)}-01"])
    expr = _write_cbio_expression(world["tmp"] / "no6.txt", raw)
    with pytest.raises(DataError) as e:
        prepare(world["features"], world["cbio"], expr)
    assert e.value.kinds == {"missing_omics"} and slide(6) in str(e.value)
    prep = prepare(world["features"], world["cbio"], expr, drop_incomplete=True)
    assert case(6) not in set(prep.manifest["case_id"]) and case(6) not in prep.omics.index


def test_duplicate_barcodes_stop_even_with_drop_incomplete(world):
    # the same slide as .h5 and .pt
    torch.save(torch.zeros(3, 8), world["features"] / f"{slide(1)}.pt")
    with pytest.raises(DataError, match="duplicate barcodes.*" + slide(1).replace(".", r"\.")):
        prepare(world["features"], world["gdc"], world["expr"], drop_incomplete=True)
    (world["features"] / f"{slide(1)}.pt").unlink()
    # a sample column twice in the expression header
    text = world["expr"].read_text().splitlines()
    dup = world["tmp"] / "dup.txt"
    dup.write_text("\n".join(ln + "\t" + ln.split("\t")[2] for ln in text) + "\n")
    with pytest.raises(DataError, match=f"duplicate barcodes: sample column.*{case(1)}-01"):
        prepare(world["features"], world["gdc"], dup)
    # two clinical rows for one case that disagree
    clin = _write_gdc_clinical(world["tmp"] / "dup_clin.txt", extra_rows=[
        ("uuid-x", case(5), "Negative", "Positive", "Negative", "1+", "")])
    with pytest.raises(DataError, match=f"case {case(5)} has 2 clinical rows that disagree on pr"):
        prepare(world["features"], clin, world["expr"], drop_incomplete=True)


def test_precomputed_her2_column_and_fixed_odx_threshold(world):
    lines = world["gdc"].read_text().splitlines()
    calc = ["HER2Calc", "HER2Calc", "CDE_ID:"] + ["Positive" if i % 2 else "Negative" for i in CLIN]
    path = world["tmp"] / "with_calc.txt"
    path.write_text("\n".join(f"{ln}\t{c}" for ln, c in zip(lines, calc)) + "\n")
    prep = prepare(world["features"], path, world["expr"], her2_column="HER2Calc", odx_threshold=31)
    per_case = prep.manifest.drop_duplicates("case_id").set_index("case_id")
    assert per_case["her2"].to_dict() == {case(i): "positive" if i % 2 else "negative" for i in CLIN}
    assert ((per_case["odx_rs"] >= 31) == (per_case["odx"] == "H")).all()
    assert prep.report["rules"]["odx"]["cut"] == "threshold"
    # precomputed ODX labels (e.g. Howard et al.'s odx85 column): used as given, unknown values unlabelled
    odx = ["odx85", "odx85", "CDE_ID:"] + ["H" if i < 4 else ("L" if i < 12 else "?") for i in CLIN]
    path2 = world["tmp"] / "with_odx.txt"
    path2.write_text("\n".join(f"{ln}\t{c}" for ln, c in zip(lines, odx)) + "\n")
    per_case = prepare(world["features"], path2, world["expr"], odx_column="odx85").manifest.drop_duplicates(
        "case_id").set_index("case_id")
    assert per_case["odx"].fillna("").to_dict() == {case(i): "H" if i < 4 else ("L" if i < 12 else "") for i in CLIN}
