"""README's generated parts and set-up commands stay true."""

import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tables_module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_generated_from_the_registry_and_flags(registered):
    tables = _tables_module()
    text = (ROOT / "README.md").read_text()
    fresh = tables.render(text, {"models": tables.model_table(build=registered), "flags": tables.flag_table()})
    assert fresh == text, "README tables are stale: run python scripts/readme_tables.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(pip install -e .*)$", readme, re.M)
    assert len(commands) >= 2, "README must give the install+run and install+test commands"
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
