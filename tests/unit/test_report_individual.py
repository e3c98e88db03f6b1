"""The one-page report on one person carries every flag the screen shows, in words."""

from __future__ import annotations

import pandas as pd

from normcore.explore import person_profile
from normcore.figures.charts import deviation_profile
from normcore.report import individual_report_html
from normcore.units import format_value, unit


def profile(age_out: bool, unseen: str) -> pd.DataFrame:
    scores = pd.DataFrame(
        {
            "row": 0,
            "sub_id": "<script>x</script>",
            "idp": ["Left-Hippocampus", "eTIV", "lh_MeanThickness_thickness"],
            "value": [0.0, 1612345.0, 2.481],
            "centile": [0.01, 50.0, 99.0],
            "z": [-6.0, 0.0, 2.33],
            "centile_se": [0.0, 0.0, 0.4],
            "out_of_age_range": age_out,
            "unseen_levels": unseen,
            "beyond_reference": [True, False, False],
            "implausible": [True, False, False],
        }
    )
    return person_profile(scores, 0)


def test_report_carries_age_unseen_site_implausible_and_screen_flags():
    prof = profile(True, "site")
    page = individual_report_html(
        {"sub_id": "<script>x</script>", "age": 86.3, "sex": "female (0)", "site": "NEWSITE"},
        prof,
        97.0,
        [deviation_profile(prof)],
        {"age range": "20.0-86.2 years"},
        notes=["column 'Left-Hippocampus', row 0 (spreadsheet line 2): zero is not a volume"],
        age=86.3,
        age_range=(20.0, 86.2),
    )
    assert "86.3 years is outside the model&#x27;s training ages 20.0-86.2 years" in page
    assert "Unseen site: &#x27;NEWSITE&#x27; was not in the model&#x27;s training data" in page
    assert "beyond the reference" in page and "implausible value" in page
    assert "zero is not a volume" in page
    assert "female (0)" in page and "NEWSITE" in page
    assert "1,612,345 mm³" not in page  # eTIV is unflagged, so it is not listed
    assert "0 mm³" in page and "2.48 mm" in page  # flagged measures with their units
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    assert "plotly" in page.lower()


def test_report_without_flags_says_so():
    prof = profile(False, "")
    prof["beyond_reference"] = False
    prof["implausible"] = False
    page = individual_report_html({"age": 40}, prof, None, [], {})
    assert "No flags" in page and "Unseen" not in page and "outside" not in page


def test_units_read_from_freesurfer_names():
    assert unit("Left-Accumbens-area") == "mm³"  # an aseg structure, not an area
    assert unit("lh_precentral_area") == "mm²" and unit("lh_WhiteSurfArea_area") == "mm²"
    assert unit("lh_G_front_sup_thickness") == "mm" and unit("eTIV") == "mm³"
    assert unit("lh_precentral_volume") == "mm³" and unit("Left-Lateral-Ventricle") == "mm³"
    assert unit("lh_precentral_meancurv") is None and unit("age") is None
    assert format_value("eTIV", 1612345.4) == "1,612,345 mm³"
    assert format_value("lh_MeanThickness_thickness", 2.4812) == "2.48 mm"
