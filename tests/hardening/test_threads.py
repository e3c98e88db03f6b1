"""Training and sampling use a bounded number of torch threads and give the rest back.

torch's thread count is process-wide: a dashboard serving several people must not let
one fit raise it for everyone, nor leave it changed afterwards.
"""

from __future__ import annotations

import pytest
import torch
from synthetic_world import SCHEMA, SPEC, TINY

from normcore import NormativeModel
from normcore.synthetic import simulate


@pytest.fixture
def outside_threads():
    """Run the test with 3 threads outside normcore; restore the original count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("env", "inside"), [(None, 1), ("2", 2)])
def test_fit_sample_score_bound_threads_and_restore_them(
    env: str | None, inside: int, outside_threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("NORMCORE_THREADS", raising=False)
    else:
        monkeypatch.setenv("NORMCORE_THREADS", env)
    seen: set[int] = set()
    data = simulate(SPEC, 120, seed=3)
    model = NormativeModel(**TINY).fit(
        data, SCHEMA, progress=lambda _: seen.add(torch.get_num_threads())
    )
    assert seen == {inside}
    assert torch.get_num_threads() == outside_threads

    original = model._sample_scores

    def spy(*args, **kwargs):
        seen.add(torch.get_num_threads())
        return original(*args, **kwargs)

    seen.clear()
    model._sample_scores = spy
    model.sample(data.head(3), n=5)
    assert seen == {inside} and torch.get_num_threads() == outside_threads
    model.score(data.head(10))
    model.deviation(data.head(10))
    assert torch.get_num_threads() == outside_threads


@pytest.mark.timeout(60)
def test_threads_are_restored_when_fit_fails(outside_threads: int) -> None:
    data = simulate(SPEC, 120, seed=3)

    def boom(_: dict) -> None:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        NormativeModel(**TINY, threads=2).fit(data, SCHEMA, progress=boom)
    assert torch.get_num_threads() == outside_threads
