"""FreeSurfer outputs read as clinics have them, and matched to a model's IDPs by region.

Fixtures under tests/data/freesurfer are hand-written in FreeSurfer's own formats: three
subjects' stats folders (subj01-02 FreeSurfer 6.0 headers, subj03 FreeSurfer 7.3 with
`-noglobal` aparc files and the Thalamus renamed) and asegstats2table / aparcstats2table
outputs of the same values.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normcore import freesurfer as fs
from normcore.errors import DataError
from normcore.freesurfer import (
    DESIKAN_KILLIANY,
    DESTRIEUX,
    DKT,
    apply_matching,
    atlas_counts,
    classify_column,
    filter_by_qc,
    is_freesurfer,
    is_qc_column,
    match_columns,
    read_freesurfer,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "freesurfer"
SUBJECTS = DATA / "subjects"
TABLES = DATA / "tables"
DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo" / "fcon1000_train.csv"


@pytest.fixture(scope="module")
def demo_idps() -> list[str]:
    columns = pd.read_csv(DEMO, nrows=0).columns
    return [c for c in columns if c not in ("sub_id", "age", "sex", "site")]


def _zip(folder: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return buffer.getvalue()


# ------------------------------------------------------------------------ stats files


def test_folder_of_subjects_gives_one_row_per_subject_with_fs_names() -> None:
    df = read_freesurfer(SUBJECTS)
    assert list(df["sub_id"]) == ["subj01", "subj02", "subj03"]
    row = df.set_index("sub_id").loc["subj01"]
    # aseg.stats: Volume_mm3 column of the structure row, and '# Measure' lines by short name
    assert row["Left-Hippocampus"] == 4412.1
    assert row["eTIV"] == pytest.approx(1507937.954030)
    assert row["BrainSegVolNotVent"] == pytest.approx(1153572.534833)
    # ?h.aparc.stats: ThickAvg / SurfArea / GrayVol, named as aparcstats2table names them
    assert row["lh_precentral_thickness"] == 2.735
    assert row["lh_precentral_area"] == 5282
    assert row["lh_precentral_volume"] == 15537
    assert row["lh_MeanThickness_thickness"] == 2.47318
    assert row["rh_WhiteSurfArea_area"] == pytest.approx(92059.8)
    # ?h.aparc.a2009s.stats keeps FreeSurfer's region names, '&' included
    assert row["lh_G&S_frontomargin_thickness"] == 2.164
    assert df.attrs["freesurfer_atlases"]["lh_G_precentral_thickness"] == DESTRIEUX
    assert df.attrs["freesurfer_atlases"]["lh_precentral_thickness"] == DESIKAN_KILLIANY


def test_freesurfer_7_subject_keeps_its_own_names_and_has_no_values_it_lacks() -> None:
    df = read_freesurfer(SUBJECTS).set_index("sub_id")
    assert df.loc["subj03", "Left-Thalamus"] == 7768.5
    assert np.isnan(df.loc["subj03", "Left-Thalamus-Proper"])  # missing, never 0
    assert np.isnan(df.loc["subj01", "Left-Thalamus"])
    assert df.loc["subj03", "eTIV"] == pytest.approx(1615811.197917)
    assert df.loc["subj03", "lh_MeanThickness_thickness"] == 2.45618


def test_freesurfer_6_aparc_line_without_its_comma_is_read() -> None:
    """FreeSurfer 6.0 writes '# Measure Cortex, CortexVol Total cortical gray matter volume,
    <value>, mm^3' in ?h.aparc.stats; an aparc file alone (no aseg.stats) gives its eTIV."""
    text = (SUBJECTS / "subj01" / "stats" / "lh.aparc.stats").read_bytes()
    assert b"CortexVol Total cortical" in text
    df = read_freesurfer(text, "lh.aparc.stats")
    assert list(df["sub_id"]) == ["subj01"]
    assert df.loc[0, "eTIV"] == pytest.approx(1507937.954030)
    assert df.loc[0, "lh_insula_thickness"] == 3.161


def test_dkt_files_are_skipped_beside_aparc_and_read_alone() -> None:
    df = read_freesurfer(SUBJECTS)
    assert any("DKTatlas" in note for note in df.attrs["notes"])
    assert df.set_index("sub_id").loc["subj01", "lh_precentral_thickness"] == 2.735  # aparc's
    alone = read_freesurfer((SUBJECTS / "subj01" / "stats" / "lh.aparc.DKTatlas.stats")
                            .read_bytes(), "lh.aparc.DKTatlas.stats")
    assert alone.loc[0, "lh_precentral_thickness"] == 2.396
    assert alone.attrs["freesurfer_atlases"]["lh_precentral_thickness"] == DKT
    assert atlas_counts(alone.columns, alone.attrs["freesurfer_atlases"])[DKT] == {
        "thickness": 4, "area": 4, "volume": 4}


def test_zip_of_a_subjects_dir_reads_like_the_folder() -> None:
    folder = read_freesurfer(SUBJECTS)
    zipped = read_freesurfer(_zip(SUBJECTS, prefix="freesurfer/"), "clinic.zip")
    pd.testing.assert_frame_equal(folder, zipped)


def test_zip_of_one_stats_folder_takes_the_subject_from_the_header() -> None:
    data = _zip(SUBJECTS / "subj02", prefix="")  # stats/aseg.stats, stats/lh.aparc.stats ...
    df = read_freesurfer(data, "one.zip")
    assert list(df["sub_id"]) == ["subj02"]


def test_zip_limits_are_checked_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zip(SUBJECTS)
    monkeypatch.setattr(fs, "MAX_ARCHIVE_ENTRIES", 5)
    with pytest.raises(DataError, match="holds 17 files; the limit is 5"):
        read_freesurfer(data, "big.zip")
    monkeypatch.setattr(fs, "MAX_ARCHIVE_ENTRIES", 50_000)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("s/stats/aseg.stats", b"#" * 3_000_000)
    monkeypatch.setattr(fs, "MAX_BYTES", 1_000_000)
    with pytest.raises(DataError, match="would decompress to more than"):
        read_freesurfer(bomb.getvalue(), "bomb.zip")


def test_zip_that_lies_about_its_sizes_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("s/stats/aseg.stats", b"# Title Segmentation Statistics\n" * 50)
    data = bytearray(buffer.getvalue())
    # shrink the declared uncompressed size in the central directory to 10 bytes
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(DataError, match="'s/stats/aseg.stats' could not be decompressed"):
        read_freesurfer(bytes(data), "liar.zip")


def test_not_a_zip_and_not_freesurfer_are_refused() -> None:
    with pytest.raises(DataError, match="not a readable zip"):
        read_freesurfer(b"PK\x03\x04garbage", "broken.zip")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "scanned on the 3T\n")
    with pytest.raises(DataError, match="holds no FreeSurfer stats files"):
        read_freesurfer(buffer.getvalue(), "x.zip")


# ------------------------------------------------------------- malformed stats files


def _aseg_lines() -> list[str]:
    return (SUBJECTS / "subj01" / "stats" / "aseg.stats").read_text().splitlines()


def test_a_short_row_is_named_by_file_and_line() -> None:
    lines = _aseg_lines()
    row = next(i for i, line in enumerate(lines) if "Left-Hippocampus" in line)
    lines[row] = "  6  17      4500     4412.1  Left-Hippocampus"
    with pytest.raises(DataError, match=rf"'aseg.stats', line {row + 1}: 5 values, but "
                                        r"'# ColHeaders' names 10 columns"):
        read_freesurfer("\n".join(lines).encode(), "aseg.stats")


def test_a_non_number_is_named_by_file_line_and_column() -> None:
    lines = _aseg_lines()
    row = next(i for i, line in enumerate(lines) if "Brain-Stem" in line)
    lines[row] = lines[row].replace("20663.2", "20663,2")
    with pytest.raises(DataError, match=rf"line {row + 1}, column Volume_mm3: '20663,2' is not"):
        read_freesurfer("\n".join(lines).encode(), "aseg.stats")
    lines = _aseg_lines()
    row = next(i for i, line in enumerate(lines) if line.startswith("# Measure Mask,"))
    lines[row] = "# Measure Mask, MaskVol, Mask Volume, big, mm^3"
    with pytest.raises(DataError, match=rf"line {row + 1}: the value of measure 'MaskVol'"):
        read_freesurfer("\n".join(lines).encode(), "aseg.stats")


def test_missing_colheaders_and_foreign_files_are_refused() -> None:
    lines = [line for line in _aseg_lines() if not line.startswith("# ColHeaders")]
    with pytest.raises(DataError, match="line 80: a table row comes before the '# ColHeaders'"):
        read_freesurfer("\n".join(lines).encode(), "aseg.stats")
    with pytest.raises(DataError, match="not a FreeSurfer aseg or aparc stats file"):
        read_freesurfer(b"# just a comment\n", "brainvol.stats")
    with pytest.raises(DataError, match="'BA_exvivo' parcellation"):
        text = (SUBJECTS / "subj01" / "stats" / "lh.aparc.stats").read_text()
        read_freesurfer(text.encode(), "lh.BA_exvivo.stats")


def test_two_files_disagreeing_on_a_value_are_refused(tmp_path: Path) -> None:
    stats = tmp_path / "subj01" / "stats"
    stats.mkdir(parents=True)
    for name in ("aseg.stats", "lh.aparc.stats", "lh.aparc.a2009s.stats"):
        (stats / name).write_bytes((SUBJECTS / "subj01" / "stats" / name).read_bytes())
    text = (stats / "lh.aparc.a2009s.stats").read_text()
    (stats / "lh.aparc.a2009s.stats").write_text(
        text.replace("Mean Thickness, 2.47318", "Mean Thickness, 2.9"))
    with pytest.raises(DataError, match="'lh_MeanThickness_thickness' is 2.47318 in "
                                        "'subj01/stats/lh.aparc.stats' but 2.9"):
        read_freesurfer(tmp_path)


# -------------------------------------------------------------------- *stats2table


def test_asegstats2table_tab_and_space_outputs() -> None:
    fs6 = read_freesurfer(TABLES / "asegstats_fs6.tsv").set_index("sub_id")
    fs7 = read_freesurfer(TABLES / "asegstats_fs7.txt").set_index("sub_id")
    folder = read_freesurfer(SUBJECTS).set_index("sub_id")
    assert fs6.loc["subj02", "Left-Thalamus-Proper"] == folder.loc["subj02",
                                                                   "Left-Thalamus-Proper"]
    assert fs7.loc["subj03", "Right-Thalamus"] == folder.loc["subj03", "Right-Thalamus"]
    # asegstats2table calls eTIV by its long name
    assert fs6.loc["subj01", "EstimatedTotalIntraCranialVol"] == pytest.approx(1507937.95403)


def test_aparcstats2table_outputs_and_their_atlas() -> None:
    dk = read_freesurfer(TABLES / "lh.aparc.thickness.tsv")
    destrieux = read_freesurfer(TABLES / "lh.aparc.a2009s.thickness.csv")
    assert dk.attrs["freesurfer_atlases"]["lh_bankssts_thickness"] == DESIKAN_KILLIANY
    assert destrieux.loc[1, "lh_G_precentral_thickness"] == 2.885
    assert atlas_counts(destrieux.columns)[DESTRIEUX] == {"thickness": 6}


def test_a_folder_of_tables_merges_and_a_placeholder_zero_yields() -> None:
    """aparcstats2table writes 0.0 for what a subject lacks (subj03's FreeSurfer 7 aparc
    has no eTIV); the real value from another table wins, a real conflict would not."""
    merged = read_freesurfer(TABLES).set_index("sub_id")
    assert merged.loc["subj03", "eTIV"] == 0.0  # only the aparc table has a column 'eTIV'
    matching = match_columns(merged.reset_index(), ["eTIV"])
    scored = apply_matching(merged.reset_index(), matching).set_index("sub_id")
    assert scored.loc["subj03", "eTIV"] == pytest.approx(1615811.197917)
    assert scored.loc["subj01", "eTIV"] == pytest.approx(1507937.95403)


def test_parcid_only_and_transposed_tables() -> None:
    text = (TABLES / "lh.aparc.thickness.tsv").read_text()
    bare = text.replace("lh_", "", 7).replace("_thickness\t", "\t").replace(
        "_thickness\t", "\t")
    df = read_freesurfer(bare.encode(), "parcid.txt")
    assert "lh_precentral_thickness" in df.columns
    table = pd.read_csv(TABLES / "asegstats_fs6.tsv", sep="\t", index_col=0)
    transposed = table.T.to_csv(sep="\t", index_label="Measure:volume")
    df = read_freesurfer(transposed.encode(), "transposed.tsv").set_index("sub_id")
    assert df.loc["subj02", "Left-Amygdala"] == table.loc["subj02", "Left-Amygdala"]


def test_malformed_tables_are_named_by_file_and_line() -> None:
    with pytest.raises(DataError, match="aseg measure 'mean', not volumes"):
        read_freesurfer(b"Measure:mean\tLeft-Hippocampus\ns1\t73.7\n", "means.txt")
    with pytest.raises(DataError, match="'t.txt', line 3: 2 values, but the first line has 3"):
        read_freesurfer(b"Measure:volume\tA\tB\ns1\t1\t2\ns2\t1\n", "t.txt")
    with pytest.raises(DataError, match="'t.txt', line 2, column Left-Hippocampus: 'n/a'"):
        read_freesurfer(b"Measure:volume\tLeft-Hippocampus\ns1\tn/a\n", "t.txt")
    with pytest.raises(DataError, match="subject 's1' appears more than once"):
        read_freesurfer(b"Measure:volume\tLeft-Hippocampus\ns1\t1\ns1\t2\n", "t.txt")
    with pytest.raises(DataError, match="neither a FreeSurfer .stats file nor"):
        read_freesurfer(b"sub_id,age\ns1,30\n", "covariates.csv")


def test_is_freesurfer_tells_uploads_apart() -> None:
    assert is_freesurfer("aseg.stats", b"")
    assert is_freesurfer("clinic.zip", b"PK\x03\x04")
    assert not is_freesurfer("table.xlsx", b"PK\x03\x04")
    assert is_freesurfer("x.tsv", (TABLES / "asegstats_fs6.tsv").read_bytes()[:200])
    assert is_freesurfer(None, (TABLES / "lh.aparc.a2009s.thickness.csv").read_bytes()[:200])
    assert is_freesurfer(None, (SUBJECTS / "subj03" / "stats" / "aseg.stats").read_bytes())
    assert not is_freesurfer("table.csv", b"sub_id,age,sex\n")
    assert not is_freesurfer("demo.csv", DEMO.read_bytes()[:4096])


# ------------------------------------------------------------------- atlas and names


def test_every_atlas_region_has_its_own_key() -> None:
    """The spelling-free key must never join two regions of one atlas or of two atlases."""
    names = fs._DK_REGIONS + fs._DESTRIEUX_REGIONS + fs._ASEG_STRUCTURES + fs._GLOBAL_MEASURES
    keys = [fs._key(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert len(fs._DK_REGIONS) == 34 and len(fs._DESTRIEUX_REGIONS) == 74


def test_atlas_recognition_counts_columns_per_atlas(demo_idps: list[str]) -> None:
    counts = atlas_counts(demo_idps)
    assert counts[DESTRIEUX] == {"thickness": 16}
    assert counts["global"] == {"volume": 6, "thickness": 2}
    assert counts["aseg"] == {"volume": 23}
    dk = [f"{h}_{r}_thickness" for h in ("lh", "rh") for r in fs._DK_REGIONS]
    assert atlas_counts(dk) == {DESIKAN_KILLIANY: {"thickness": 68}}
    assert classify_column("lh_G_precentral_thickness").atlas == DESTRIEUX
    assert classify_column("lh_precentral_thickness").atlas == DESIKAN_KILLIANY
    assert classify_column("lh.G.S_frontomargin.thickness").identity == classify_column(
        "lh_G&S_frontomargin_thickness").identity
    assert classify_column("age") is None and classify_column("site") is None


def test_thalamus_proper_is_the_freesurfer_7_thalamus(demo_idps: list[str]) -> None:
    fs7 = read_freesurfer(TABLES / "asegstats_fs7.txt")
    matching = match_columns(fs7, demo_idps)
    assert matching.renames["Left-Thalamus"] == "Left-Thalamus-Proper"
    assert matching.renames["EstimatedTotalIntraCranialVol"] == "eTIV"
    assert "Left-Thalamus is read as Left-Thalamus-Proper" in matching.message
    scored = apply_matching(fs7, matching)
    assert scored.loc[0, "Left-Thalamus-Proper"] == 7768.5
    assert "Left-Thalamus" not in scored.columns


def test_a_table_merged_across_versions_takes_each_subjects_own_thalamus() -> None:
    """asegstats2table over FreeSurfer 6 and 7 subjects writes both names, 0 where absent:
    issue 18's 'Thalamus-Proper = 0 for everyone' must not reach scoring."""
    table = pd.DataFrame({"sub_id": ["a", "b", "c"],
                          "Left-Thalamus-Proper": [7398.6, 0.0, 0.0],
                          "Left-Thalamus": [0.0, 7768.5, 0.0]})
    matching = match_columns(table, ["Left-Thalamus-Proper"])
    assert matching.sources["Left-Thalamus-Proper"] == ("Left-Thalamus-Proper", "Left-Thalamus")
    out = apply_matching(table, matching)
    assert list(out["Left-Thalamus-Proper"]) == [7398.6, 7768.5, 0.0]  # c stays 0, to flag
    table.loc[0, "Left-Thalamus"] = 5000.0
    with pytest.raises(DataError, match=r"Row 0 \(spreadsheet line 2\) gives two different"):
        apply_matching(table, matching)


def test_destrieux_model_is_never_offered_desikan_killiany_columns(
    demo_idps: list[str],
) -> None:
    dk_table = ["sub_id", "eTIV", "BrainSegVolNotVent", "lh_MeanThickness_thickness",
                "rh_MeanThickness_thickness"] + [
        f"{h}_{r}_thickness" for h in ("lh", "rh") for r in fs._DK_REGIONS]
    matching = match_columns(dk_table, demo_idps)
    assert set(matching.found) == {"eTIV", "BrainSegVolNotVent", "lh_MeanThickness_thickness",
                                   "rh_MeanThickness_thickness"}
    assert "lh_G_precentral_thickness" in matching.other_atlas
    assert not any("precentral" in c for c in matching.renames)
    assert matching.message.startswith(
        "Your table is Desikan-Killiany (68 thickness columns); this model uses Destrieux: "
        "4 of its 47 IDPs are in your table (eTIV, BrainSegVolNotVent, "
        "lh_MeanThickness_thickness, rh_MeanThickness_thickness).")
    assert "aparcstats2table --parc aparc.a2009s" in matching.message
    # and the other way round: a Desikan-Killiany model never takes Destrieux columns
    back = match_columns(["lh_G_precentral_thickness"], ["lh_precentral_thickness"])
    assert back.found == () and back.other_atlas == ("lh_precentral_thickness",)


def test_dkt_table_is_not_a_desikan_killiany_model() -> None:
    alone = read_freesurfer((SUBJECTS / "subj01" / "stats" / "lh.aparc.DKTatlas.stats")
                            .read_bytes(), "lh.aparc.DKTatlas.stats")
    model = ["lh_bankssts_thickness", "lh_precentral_thickness"]  # bankssts: DK only
    matching = match_columns(alone, model)
    assert matching.found == ()
    assert "Your table is DKT" in matching.message and "Desikan-Killiany" in matching.message


def test_full_match_says_so(demo_idps: list[str]) -> None:
    matching = match_columns(pd.read_csv(DEMO, nrows=3), demo_idps)
    assert matching.missing == () and matching.renames == {}
    assert matching.message == "All 47 IDPs of this model are in your table."


# ------------------------------------------------------------------------------ QC


@pytest.mark.parametrize("name", ["lhSurfaceHoles", "rhSurfaceHoles", "SurfaceHoles", "euler",
                                  "euler_number", "lh_euler_number", "mean_euler", "avg_en",
                                  "Euler"])
def test_qc_columns_are_recognised_and_never_idps(name: str) -> None:
    assert is_qc_column(name)
    assert classify_column(name).atlas == "QC"
    matching = match_columns([name, "eTIV"], ["eTIV"])
    assert matching.qc_columns == (name,)


def test_qc_names_do_not_catch_brain_measures(demo_idps: list[str]) -> None:
    assert fs.qc_columns(demo_idps) == []


def test_filter_by_qc_drops_and_names_people() -> None:
    df = pd.DataFrame({"sub_id": ["a", "b", "c", "d"], "euler": [-20, -250, np.nan, -80],
                       "SurfaceHoles": [11, 126, 3, 41]})
    result = filter_by_qc(df, "euler", -100, id_column="sub_id")
    assert list(result.kept["sub_id"]) == ["a", "d"]
    assert result.dropped_rows == (1, 2) and result.dropped_ids == ("b", "c")
    assert result.message == "2 of 4 people dropped for euler below -100 or missing: b, c."
    holes = filter_by_qc(df, "SurfaceHoles", 50)
    assert holes.dropped_ids == ("row 1",)
    assert filter_by_qc(df, "SurfaceHoles", 500).message.startswith("Nobody was dropped")
    with pytest.raises(DataError, match="'sub_id' is not a FreeSurfer QC column"):
        filter_by_qc(df, "sub_id", 0)
