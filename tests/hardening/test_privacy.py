"""Nothing uploaded is left on disk, usage statistics are off, model files cannot run code.

The upload -> train -> score session is driven through AppTest (the same page scripts
the server runs); tests/hardening/test_sessions_e2e.py repeats the file audit against a
real `streamlit run` server with its own HOME and TMPDIR and checks its network peers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
from privacy import files_holding, now, planted_cohort
from sandbox import TrapProxy
from streamlit.testing.v1 import AppTest
from streamlit_browser import ARTIFACTS, streamlit_server
from synthetic_world import SPEC

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".streamlit" / "config.toml"


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def audited_dirs() -> list[Path]:
    """Everywhere the app could write: repository (= the app's working directory), the
    current directory, ~/.streamlit and the system temporary directory."""
    dirs = [REPO, Path.cwd(), Path.home() / ".streamlit", Path(tempfile.gettempdir())]
    return list(dict.fromkeys(d.resolve() for d in dirs))


@pytest.mark.timeout(300)
def test_upload_train_score_leaves_no_uploaded_value_on_disk(app) -> None:
    start = now()
    planted = planted_cohort(SPEC, 150, seed=5, label="NCPRIV")
    at = app("pages/data.py")
    at.file_uploader(key="data_upload").set_value(
        ("clinic.csv", planted.table.to_csv(index=False).encode(), "text/csv")
    )
    at.run()
    no_exception(at)
    assert any("150 rows" in s.value for s in at.success)

    at.switch_page("pages/model.py").run()
    at.number_input(key="train_epochs").set_value(5)
    at.number_input(key="train_reference").set_value(300)
    at.number_input(key="train_steps").set_value(10)
    at.selectbox(key="train_width").set_value(32)
    at.selectbox(key="train_depth").set_value(2)
    at.button(key="train_start").click().run()
    no_exception(at)
    deadline = time.monotonic() + 180
    while "trained" not in at.session_state["models"]:
        assert time.monotonic() < deadline, "training did not finish in time"
        assert not at.error, at.error[0].value
        time.sleep(1.0)
        at.run()
        no_exception(at)

    at.switch_page("pages/cohort.py").run()
    no_exception(at)
    assert at.dataframe, [e.value for e in (*at.error, *at.info, *at.warning)]
    shown = at.dataframe[0].value
    assert shown["subject_id"].str.startswith(planted.tag).all()  # scored: values went through
    at.switch_page("pages/individual.py").run()
    no_exception(at)

    hits = files_holding([planted], audited_dirs(), since=start)
    assert not hits, f"uploaded values found on disk: {hits}"


def test_usage_statistics_are_off_and_the_server_is_quiet() -> None:
    config = tomllib.loads(CONFIG.read_text())
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["headless"] is True  # never tries to open a browser
    assert config["server"]["fileWatcherType"] == "none"
    # The Dockerfile's command must not override the repository config.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "gatherUsageStats=true" not in dockerfile.replace(" ", "")


@pytest.mark.timeout(180)
def test_listening_on_every_interface_asks_no_outside_server_for_an_address(tmp_path) -> None:
    """The Dockerfile's server listens on 0.0.0.0. There Streamlit would ask
    checkip.amazonaws.com for the machine's public address, for its start-up banner
    (and again for any page opened through a host name it does not know); serve.py
    stops it. The request would go to the trap proxy named in the proxy variables."""
    proxy = TrapProxy()
    trap = f"http://127.0.0.1:{proxy.port}"
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
        "NORMCORE_DEMO_DIR": str(tmp_path),  # no demo: the server starts at once
        "HTTP_PROXY": trap, "HTTPS_PROXY": trap, "http_proxy": trap, "https_proxy": trap,
        "no_proxy": "127.0.0.1,localhost",
    }  # fmt: skip
    log = ARTIFACTS / "every-interface.log"
    try:
        with streamlit_server(log.name, env, address="0.0.0.0"):
            deadline = time.monotonic() + 60
            while "Local URL" not in log.read_text(errors="replace"):  # after any lookup
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
                time.sleep(0.2)
    finally:
        proxy.close()
    assert not proxy.requests, proxy.requests[:3]
    assert "external IP" not in log.read_text(errors="replace")


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.timeout(60)
def test_pickle_bundle_upload_is_refused_and_runs_nothing(app, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    payloads = {
        "evil.normcore": pickle.dumps(_Payload(str(marker))),
        # a torch.save-style zip holding the same pickle
        "evil-zip.normcore": b"PK\x03\x04" + pickle.dumps(_Payload(str(marker))),
    }
    at = app("pages/model.py")
    for name, content in payloads.items():
        at.file_uploader(key="bundle_upload").set_value(
            (name, content, "application/octet-stream")
        )
        at.run()
        no_exception(at)
        assert at.error and "not a usable normcore model" in at.error[0].value, name
        assert "models" not in at.session_state or "uploaded" not in at.session_state["models"]
    assert not marker.exists(), "unpickling ran the payload"
