"""Inputs as clinics send them, in the browser: hostile text in a table makes no request
leave the machine, and a zip of FreeSurfer stats folders with a covariate table is read,
its atlas matched to the model's and scored (issues 18 and 20)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from playwright.sync_api import Page, expect
from streamlit_browser import REPO_ROOT, save_screenshot, wait_for_app

from normcore import NormativeModel, Schema, read_table
from normcore.freesurfer import match_columns, read_freesurfer

DEMO = REPO_ROOT / "assets" / "demo"
SUBJECTS = REPO_ROOT / "tests" / "data" / "freesurfer" / "subjects"
EVIL_SITE = "![x](http://evil.example/t.png)"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def no_exception(page: Page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)


def open_page(page: Page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).first.click()
    heading = page.locator('[data-testid="stHeading"]', has_text=re.compile(f"^{title}"))
    expect(heading.first).to_be_visible(timeout=180_000)
    wait_for_app(page, timeout_ms=180_000)


def upload(page: Page, uploader_label: str, path: Path) -> None:
    box = page.locator('[data-testid="stFileUploader"]', has_text=uploader_label).first
    box.locator('input[type="file"]').set_input_files(str(path))
    wait_for_app(page, timeout_ms=120_000, settle_ms=500)


def choose(page: Page, label: str, option: str) -> None:
    box = page.locator('[data-testid="stSelectbox"]', has_text=label).first
    box.click()
    page.keyboard.type(option)
    page.get_by_role("option", name=option, exact=True).first.click()
    wait_for_app(page)


def test_hostile_site_and_id_make_no_request_leave_localhost(app_url, page, tmp_path):
    """A site value written as a markdown image, and a link as an id, are shown as text on
    the Data and Cohort pages; the browser asks nothing of any other host."""
    outside: list[str] = []
    page.on(
        "request",
        lambda request: outside.append(request.url)
        if urlparse(request.url).hostname not in LOCAL_HOSTS and request.url.startswith("http")
        else None,
    )
    table = pd.read_csv(DEMO / "fcon1000_test.csv").head(20)
    table.loc[:4, "site"] = EVIL_SITE
    table.loc[0, "sub_id"] = "[click](http://evil.example/)"
    table["sex"] = table["sex"].map({0: "F", 1: "M"})
    path = tmp_path / "hostile.csv"
    table.to_csv(path, index=False)

    page.goto(f"{app_url}/data")
    wait_for_app(page)
    upload(page, "Table", path)
    no_exception(page)
    expect(page.get_by_text("Site codes", exact=False).first).to_be_visible()
    open_page(page, "Cohort")
    no_exception(page)
    expect(page.get_by_text(EVIL_SITE, exact=False).filter(visible=True).first).to_be_visible()
    save_screenshot(page, "cohort-hostile-site")
    rendered = page.locator('[data-testid="stMain"]')
    assert rendered.locator('img[src*="evil"]').count() == 0
    assert rendered.locator('a[href*="evil"]').count() == 0
    assert outside == [], outside


def stats_zip(tmp_path: Path) -> Path:
    """The three fixture subjects' stats folders, zipped as a clinic sends them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for stats in sorted(SUBJECTS.rglob("*.stats")):
            archive.write(stats, Path("subjects") / stats.relative_to(SUBJECTS))
    path = tmp_path / "subjects.zip"
    path.write_bytes(buffer.getvalue())
    return path


def small_model(zip_path: Path, out: Path) -> list[str]:
    """A small model trained on the demo's training half, on the demo IDPs the FreeSurfer
    fixtures provide (so that they can be scored), saved to `out`; its IDPs."""
    measures = read_freesurfer(zip_path)
    demo_idps = [c for c in read_table(DEMO / "fcon1000_test.csv").columns
                 if c not in ("sub_id", "age", "sex", "site")]
    idps = list(match_columns(measures, demo_idps).found)
    train = read_table(DEMO / "fcon1000_train.csv")
    model = NormativeModel(
        max_epochs=3, reference_samples=300, grid_points=11, sampling_steps=20, threads=1,
        network={"width": 64, "depth": 2},
    )
    model.fit(train, Schema.infer(train, idps=idps))
    model.save(out)
    return idps


def test_freesurfer_zip_with_covariates_is_matched_and_scored(app_url, page, tmp_path):
    zip_path = stats_zip(tmp_path)
    bundle = tmp_path / "fs-model.normcore"
    idps = small_model(zip_path, bundle)
    covariates = tmp_path / "covariates.csv"
    pd.DataFrame(
        {"participant_id": ["subj01", "subj02", "subj03"], "age": [34.0, 61.5, 47.2],
         "sex": [0, 1, 0], "site": ["ICBM", "ICBM", "ICBM"]}
    ).to_csv(covariates, index=False)

    page.goto(f"{app_url}/model")
    wait_for_app(page)
    upload(page, "Model bundle", bundle)
    no_exception(page)
    open_page(page, "Data")
    upload(page, "Table", zip_path)
    no_exception(page)
    expect(page.get_by_text("no age, sex or site").first).to_be_visible()
    upload(page, "Covariates", covariates)
    no_exception(page)
    said = f"All {len(idps)} IDPs of this model are in your table"
    expect(page.get_by_text(said, exact=False).first).to_be_visible()
    expect(page.get_by_text("Left-Thalamus is read as Left-Thalamus-Proper").first).to_be_visible()
    choose(page, "0 (2 people) means", "0")
    choose(page, "1 (1 person) means", "1")
    expect(page.get_by_text("Ready to score 3 people")).to_be_visible()
    save_screenshot(page, "data-freesurfer-zip")

    open_page(page, "Cohort")
    no_exception(page)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download scores").click()
    scores = pd.read_csv(info.value.path())
    assert len(scores) == 3 * len(idps)
    assert set(scores["sub_id"]) == {"subj01", "subj02", "subj03"}
    assert scores["centile"].between(0, 100).all()
