"""The package's import graph: no cycles, no streamlit in the core, no process groups in
the numeric modules. Read from the source with `ast`, so nothing is executed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "normcore"
NUMERIC = ("normcore.train", "normcore.reference", "normcore.joint", "normcore.first_stage")
"""They type against parallel_protocol.Collectives; only the model asks distributed for the
running process group."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module this file imports (TYPE_CHECKING and function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from normcore import bundle` depends on the module normcore.bundle
            modules = {f"{base}.{a.name}" for a in node.names} & known
            found.update(modules)
            if len(modules) < len(node.names):
                found.add(base)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        targets = set()
        for imported in _imports(path, name, known):
            # an import of normcore.x.y depends on normcore.x.y (or its package)
            while imported and imported not in known and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in known and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _all_imports() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read():
    """The walk sees the package's real edges (so the tests below can fail)."""
    graph = _graph()
    assert len(graph) > 20
    assert "normcore.joint" in graph["normcore.model"]
    assert "normcore.errors" in graph["normcore.schema"]
    assert "normcore.bundle" in graph["normcore.model"]  # `from normcore import bundle`


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    assert _cycle(_graph()) is None


def test_errors_imports_nothing_of_normcore():
    assert _graph()["normcore.errors"] == set()


def test_the_core_never_imports_streamlit():
    users = [m for m, imported in _all_imports().items() if any(
        i == "streamlit" or i.startswith("streamlit.") for i in imported)]  # fmt: skip
    assert users == []


def test_numeric_modules_do_not_import_process_groups():
    graph = _graph()
    assert "normcore.distributed" in graph["normcore.launch"]
    assert [m for m in NUMERIC if "normcore.distributed" in graph[m]] == []


# ------------------------------------------------------------------ light start-up
HEAVY = ("torch", "pandas", "scipy", "sklearn", "plotly", "pyarrow", "openpyxl")
"""Packages that take seconds to import: the parser and `--help` must load none of them."""

HELP_EVERY_COMMAND = """
import contextlib, io, sys
from normcore.cli import build_parser, main
commands = list(build_parser()._subparsers._group_actions[0].choices)
for argv in [["--help"], *([name, "--help"] for name in commands)]:
    with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):
        main(argv)
    assert "usage: normcore" in shown.getvalue(), argv
print(len(commands), ";", ",".join(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))))
"""


def _run(code: str) -> str:
    """`code` in a fresh interpreter (this process has imported everything already)."""
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"],
        capture_output=True, text=True, cwd=PACKAGE.parent, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_help_of_every_command_loads_nothing_heavy():
    n_commands, heavy = _run(HELP_EVERY_COMMAND).split(";")
    assert int(n_commands) >= 9  # fit ... keygen: every command's help was shown
    assert heavy.strip() == ""


def test_the_start_up_check_sees_a_heavy_import():
    """The same check after the commands' and the training loop's modules are imported
    names torch and pandas."""
    heavy = _run(f"import normcore.commands, normcore.train\n{HELP_EVERY_COMMAND}").split(";")[1]
    assert {"torch", "pandas"} <= set(heavy.strip().split(","))


SCORE = """
import sys
import pandas as pd
from normcore.cli import main
table = pd.read_csv({table!r}).head(20)
table.loc[0, table.columns[-1]] = {blank}
table.to_csv({copy!r}, index=False)
assert main(["score", {model!r}, {copy!r}, "--out", {out!r}]) == 0
assert len(pd.read_csv({out!r})) > 0
heavy = ("torch", "sklearn", "scipy.stats", "scipy.interpolate")
print(",".join(sorted(m for m in heavy if m in sys.modules)))
"""


def _heavy_after_scoring(tmp_path: Path, demo_model: Path, blank: str) -> str:
    """`normcore score` of the demo model and 20 of its test people, run in a fresh
    interpreter; which of torch, scikit-learn, scipy.stats and scipy.interpolate were
    loaded by the end.
    `blank` is the last IDP of the first person: its value, or a blank cell (a missing
    IDP, which needs the network)."""
    table = demo_model.parent / "fcon1000_test.csv"
    code = SCORE.format(
        table=str(table), blank=blank, copy=str(tmp_path / "people.csv"),
        model=str(demo_model), out=str(tmp_path / "scores.csv"),
    )  # fmt: skip
    return _run(code)


def test_scoring_a_complete_table_from_a_model_file_loads_no_torch(tmp_path, demo_model):
    """Loading a bundle reads the denoiser's weights as arrays, and people who have every
    IDP are scored from the reference table: the network, and torch, are never needed;
    nor are scikit-learn, scipy.stats and scipy.interpolate (fitting and building tables
    use them)."""
    assert _heavy_after_scoring(tmp_path, demo_model, "table.loc[0, table.columns[-1]]") == ""


def test_scoring_a_person_who_lacks_an_idp_loads_torch(tmp_path, demo_model):
    """The same check sees torch once the network draws (a missing IDP's band)."""
    assert "torch" in _heavy_after_scoring(tmp_path, demo_model, "None").split(",")


def test_the_public_names_still_import_from_the_package():
    shown = _run(
        "import sys, normcore\n"
        "light = not set(HEAVY) & {m.split('.')[0] for m in sys.modules}\n"
        "from normcore import NormativeModel, Schema, read_table, DataError, __version__\n"
        "import normcore.model, normcore.schema, normcore.data\n"
        "assert NormativeModel is normcore.model.NormativeModel\n"
        "assert Schema is normcore.schema.Schema and read_table is normcore.data.read_table\n"
        "assert set(normcore.__all__) <= set(dir(normcore))\n"
        "print(light, __version__ == normcore.model.__version__)"
    )
    assert shown == "True True"
