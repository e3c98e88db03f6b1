"""Teach page: simulate, train live, and see the learned fan and a PIT histogram."""

from __future__ import annotations

import time

from dashboard_app import app, no_exception


def test_teach_trains_a_small_model_and_shows_its_fan_and_pit_histogram():
    at = app("pages/teach.py")
    at.slider(key="teach_d").set_value(2)
    at.slider(key="teach_n").set_value(300)
    next(b for b in at.button if b.label == "Simulate and train").click().run()
    no_exception(at)
    job, _ = at.session_state["teach_job"]
    deadline = time.monotonic() + 180
    while not job.done:
        assert time.monotonic() < deadline, "the teaching model did not finish in time"
        time.sleep(1.0)
    at.run()
    no_exception(at)
    assert not at.error, at.error[0].value
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("learned vs true" in spec for spec in charts)
    assert any("PIT histogram of 500 new simulated people" in spec for spec in charts)
