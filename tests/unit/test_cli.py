"""The command line contract: arguments, output formats, errors on stderr with exit 2."""

import pandas as pd
import pytest

from normcore.cli import main


@pytest.fixture(scope="module")
def model_path(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.normcore"
    fitted.save(path)
    return path


@pytest.mark.parametrize("prior", [False, True])
def test_fit_writes_a_loadable_model(
    train_df, tmp_path, capsys, monkeypatch, tiny_settings, prior
):
    import functools

    import normcore.commands
    from normcore.model import NormativeModel

    tiny = {k: v for k, v in tiny_settings.items() if k != "max_epochs"}
    monkeypatch.setattr(
        normcore.commands,
        "NormativeModel",
        functools.partial(normcore.commands.NormativeModel, **tiny),
    )
    table = tmp_path / "train.csv"
    train_df.to_csv(table, index=False)
    out = tmp_path / "m.normcore"
    args = ["fit", str(table), "--out", str(out), "--epochs", "2", "--idps", "idp_000,idp_001"]
    code = main(args + (["--gaussian-prior"] if prior else []))
    assert code == 0 and out.exists()
    assert "2 IDPs" in capsys.readouterr().err
    assert NormativeModel.load(out, device="cpu").config.gaussian_prior is prior


def test_score_writes_the_long_table(model_path, test_df, tmp_path):
    table, out = tmp_path / "t.csv", tmp_path / "scores.csv"
    test_df.to_csv(table, index=False)
    assert main(["score", str(model_path), str(table), "--out", str(out)]) == 0
    scores = pd.read_csv(out)
    assert list(scores.columns[:7]) == [
        "row",
        "subject_id",
        "idp",
        "value",
        "centile",
        "z",
        "centile_se",
    ]
    assert len(scores) == len(test_df) * 3 and scores["row"].max() == len(test_df) - 1


def test_centiles_and_sample_follow_the_grid(model_path, tmp_path):
    grid = tmp_path / "grid.csv"
    pd.DataFrame({"age": [30, 60], "sex": ["F", "M"], "site": ["S0", "S1"]}).to_csv(
        grid, index=False
    )
    fan, samples = tmp_path / "fan.csv", tmp_path / "samples.csv"
    assert (
        main(
            [
                "centiles",
                str(model_path),
                str(grid),
                "--quantiles",
                "0.1,0.5,0.9",
                "--out",
                str(fan),
            ]
        )
        == 0
    )
    assert list(pd.read_csv(fan).columns) == ["age", "sex", "site", "idp", "quantile", "value"]
    assert main(["sample", str(model_path), str(grid), "--n", "4", "--out", str(samples)]) == 0
    s = pd.read_csv(samples)
    assert len(s) == 8 and list(s.columns) == [
        "age",
        "sex",
        "site",
        "idp_000",
        "idp_001",
        "idp_002",
    ]


def test_bad_input_is_one_message_on_stderr_and_exit_2(model_path, test_df, tmp_path, capsys):
    table = tmp_path / "bad.csv"
    bad = test_df.drop(columns="age")
    bad.to_csv(table, index=False)
    assert main(["score", str(model_path), str(table), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "'age'" in err and "Traceback" not in err
    assert main(["score", str(tmp_path / "missing.normcore"), str(table), "--out", "x.csv"]) == 2
    assert "No model file" in capsys.readouterr().err


def test_corrupted_model_file_is_refused(test_df, tmp_path, capsys):
    broken = tmp_path / "broken.normcore"
    broken.write_bytes(b"\x00" * 100)
    table = tmp_path / "t.csv"
    test_df.to_csv(table, index=False)
    assert main(["score", str(broken), str(table), "--out", str(tmp_path / "s.csv")]) == 2
    assert "truncated or is not a normcore model" in capsys.readouterr().err


def test_adapt_writes_an_adapted_model_and_warns_about_few_controls(
    model_path, train_df, tmp_path, capsys
):
    controls = train_df.head(12).assign(site="CLINIC")
    table, out = tmp_path / "controls.csv", tmp_path / "adapted.normcore"
    controls.to_csv(table, index=False)
    assert main(["adapt", str(model_path), str(table), "--out", str(out), "--steps", "10"]) == 0
    err = capsys.readouterr().err
    assert "adapted to site 'CLINIC' from 12 controls" in err and "warning:" in err


def test_unknown_subcommand_exits_non_zero():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code != 0
