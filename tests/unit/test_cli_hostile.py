"""The command line against hostile and careless use (issue 20, items 2, 5, 6 and 7), run
as the issue ran it: `main(argv)` with files on disk. Every refusal is one message on
stderr with exit status 2, before any work, and destroys nothing."""

import os
import stat
import threading
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import normcore.commands
from normcore import bundle, provenance
from normcore.cli import main
from normcore.safe_write import OutputError, atomic_output, check_output

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_configured_key(monkeypatch):
    monkeypatch.delenv(provenance.KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def model_path(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "model.normcore"
    fitted.save(path)
    return path


@pytest.fixture
def table(test_df, tmp_path):
    path = tmp_path / "t.csv"
    test_df.to_csv(path, index=False)
    return path


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "grid.csv"
    pd.DataFrame({"age": [30.0], "sex": ["F"], "site": ["S0"]}).to_csv(path, index=False)
    return path


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------ 7: flags
@pytest.mark.parametrize(
    ("command", "flag", "value", "message"),
    [
        ("fit", "--epochs", "0", "--epochs: must be at least 1, not 0"),
        ("fit", "--epochs", "-1", "--epochs: must be at least 1, not -1"),
        ("fit", "--nproc", "0", "--nproc: must be at least 1"),
        ("fit", "--seed", "-3", "--seed: must be 0 or more"),
        ("sample", "--n", "0", "--n: must be at least 1, not 0"),
        ("adapt", "--steps", "-1", "--steps: must be at least 1, not -1"),
        ("score", "--chunk-rows", "0", "--chunk-rows: must be at least 1"),
        ("centiles", "--quantiles", "nan", "'nan' is not a probability strictly between 0 and 1"),
        ("centiles", "--quantiles", "0,0.5", "'0' is not a probability strictly between"),
        ("centiles", "--quantiles", "0.5,1", "'1' is not a probability strictly between"),
        ("centiles", "--quantiles", "inf", "'inf' is not a probability"),
        ("centiles", "--quantiles", ",", "give at least one probability"),
        ("sample", "--n", "ten", "'ten' is not a whole number"),
    ],
)
def test_bad_flags_are_usage_errors(command, flag, value, message, tmp_path, capsys):
    positional = {"fit": ["t.csv"], "score": ["m", "t.csv"], "centiles": ["m", "g.csv"],
                  "sample": ["m", "g.csv"], "adapt": ["m", "t.csv"]}[command]  # fmt: skip
    argv = [command, *positional, "--out", str(tmp_path / "o"), f"{flag}={value}"]
    assert message in usage_error(argv, capsys)


def test_sample_n_zero_never_reaches_scikit_learn(model_path, grid, tmp_path, capsys):
    err = usage_error(["sample", str(model_path), str(grid), "--n", "0", "--out", "s.csv"], capsys)
    assert "n_samples" not in err and "must be at least 1" in err


# ------------------------------------------------------------------------ 6: --out
def test_score_into_its_own_table_is_refused_and_the_table_kept(model_path, table, capsys):
    before = table.read_bytes()
    assert main(["score", str(model_path), str(table), "--out", str(table)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert table.read_bytes() == before


def test_score_into_the_same_table_under_another_name_is_refused(model_path, table, capsys):
    link = table.with_name("alias.csv")
    os.symlink(table, link)
    assert main(["score", str(model_path), str(table), "--out", str(link)]) == 2
    assert "is the input" in capsys.readouterr().err


def test_out_naming_the_model_is_refused_and_the_model_kept(model_path, table, capsys):
    before = model_path.read_bytes()
    assert main(["score", str(model_path), str(table), "--out", str(model_path)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert model_path.read_bytes() == before
    assert main(["adapt", str(model_path), str(table), "--out", str(model_path)]) == 2
    assert model_path.read_bytes() == before


def test_fifo_and_folder_at_out_are_never_replaced(model_path, table, tmp_path, capsys):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert main(["score", str(model_path), str(table), "--out", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert main(["score", str(model_path), str(table), "--out", str(folder)]) == 2
    assert folder.is_dir()
    with pytest.raises(OutputError, match="not a regular file"):
        bundle.write(fifo, b"model")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_fit_into_a_missing_folder_fails_before_reading_the_table(
    table, tmp_path, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the table was read before --out was checked")

    monkeypatch.setattr(normcore.commands, "read_table", never)
    out = tmp_path / "missing" / "m.normcore"
    assert main(["fit", str(table), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_writers_never_share_a_temporary_file_and_each_leaves_a_whole_file(tmp_path):
    target = tmp_path / "out.csv"
    names, barrier = [], threading.Barrier(2)

    def write(text: str) -> None:
        with atomic_output(target, text=True) as f:
            names.append(f.name)
            barrier.wait()
            f.write(text * 10_000)

    threads = [threading.Thread(target=write, args=(c,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 2
    assert target.read_text() in ("a" * 10_000, "b" * 10_000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target, text=True) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_check_output_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root writes anywhere: a file in place of a folder
            with pytest.raises(OutputError, match="does not exist"):
                check_output(tmp_path / "file" / "x.csv", ())
        else:
            with pytest.raises(OutputError, match="cannot be written"):
                check_output(folder / "x.csv", ())
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------ 5: CSV
def test_formula_cells_in_cli_csvs_are_neutralised(model_path, test_df, tmp_path):
    hostile = test_df.copy()
    hostile["subject_id"] = hostile["subject_id"].astype(object)
    hostile.loc[0, "subject_id"] = '=HYPERLINK("http://evil.example","x")'
    hostile.loc[1, "subject_id"] = "@SUM(1+1)"
    table, out = tmp_path / "hostile.csv", tmp_path / "scores.csv"
    hostile.to_csv(table, index=False)
    assert main(["score", str(model_path), str(table), "--out", str(out)]) == 0
    ids = pd.read_csv(out)["subject_id"]
    assert ids.str.startswith(("=", "@", "+")).sum() == 0
    assert "'=HYPERLINK(\"http://evil.example\",\"x\")" in set(ids)
    grid = tmp_path / "grid.csv"
    pd.DataFrame({"age": [30.0], "sex": ["F"], "site": ["=1+1"]}).to_csv(grid, index=False)
    for command in ("centiles", "sample"):
        out = tmp_path / f"{command}.csv"
        assert main([command, str(model_path), str(grid), "--out", str(out)]) == 0
        assert set(pd.read_csv(out)["site"]) == {"'=1+1"}


# ------------------------------------------------------- 2: provenance and signing
def test_info_prints_fingerprint_and_provenance(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    out = capsys.readouterr().out
    fingerprint = bundle.origin(model_path.read_bytes()).fingerprint
    assert fingerprint in out and "not signed" in out
    assert "trained on" in out and "300 people" in out and "training table SHA-256" in out


def test_keygen_sign_and_verify_through_the_cli(model_path, table, tmp_path, capsys):
    key = tmp_path / "k.key"
    assert main(["keygen", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert main(["keygen", str(key)]) == 2  # never overwritten
    signed = tmp_path / "signed.normcore"
    assert main(["sign", str(model_path), "--key", str(key), "--out", str(signed)]) == 0
    capsys.readouterr()
    assert main(["info", str(signed), "--key", str(key)]) == 0
    assert "signed, verified with the configured key" in capsys.readouterr().out
    out = tmp_path / "s.csv"
    assert main(["score", str(signed), str(table), "--out", str(out), "--key", str(key)]) == 0
    # An unsigned model is refused while a key is configured.
    assert main(["score", str(model_path), str(table), "--out", str(out), "--key", str(key)]) == 2
    assert "not signed" in capsys.readouterr().err


def test_malformed_model_is_one_message_without_traceback(model_path, table, tmp_path, capsys):
    body = b'{"__metadata__": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    hostile = tmp_path / "deep.normcore"
    hostile.write_bytes(len(body).to_bytes(8, "little") + body)
    assert main(["score", str(hostile), str(table), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "nested" in err and "Traceback" not in err and "RecursionError" not in err


# --------------------------------------------------------------- 2: the dashboard
def test_dashboard_shows_no_tracebacks():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
