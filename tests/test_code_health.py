"""The packages' shape: modules import downward only, the library imports no command, no
command imports another, and every command's --help lists its own flags at once (no TensorFlow
start-up)."""

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGES = ("reszoo", "training", "serving")
COMMANDS = ("training.train", "training.export", "training.predict", "training.validate", "serving")
COMMON = "training.common"


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _paths():
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path, modules):
    """``(module-level imports, imports inside functions)`` of project modules in ``path``,
    each as the module it names (``from reszoo import naming`` names ``reszoo.naming``); the
    inside ones as a list, one entry per import statement."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []

    def named(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module:
            return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names]
        return []

    def visit(node, inside):
        for child in ast.iter_child_nodes(node):
            found = {n for n in named(child) if n.split(".")[0] in (*PACKAGES, "experiments")}
            if inside and found:
                nested.append(found)
            elif found:
                top.update(found)
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, nested


def _graph():
    paths = _paths()
    return {name: _imports(path, paths) for name, path in paths.items()}


def _command_of(module):
    """The command ``module`` belongs to (one of ``COMMANDS``), or None (the library, the shared
    floor, or a module of train's)."""
    return next((c for c in COMMANDS if module == c or module.startswith(c + ".")), None)


def test_no_module_imports_a_module_that_imports_it():
    graph = _graph()
    edges = {name: {m for m in top if m in graph} - {name} for name, (top, _) in graph.items()
             if name not in PACKAGES}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(name for name in edges if name in reach(name))
    assert cycles == [], f"modules on an import circle: {cycles}"
    assert "reszoo.registry" in reach("reszoo.weights") and "reszoo.weights" in reach("reszoo.api")
    assert "training.common.layout" in reach("serving.server") and "serving.model" in reach("serving.server")


def test_the_library_imports_no_command_and_no_reszoo_module_inside_a_function():
    for name, (top, nested) in _graph().items():
        if name.split(".")[0] != "reszoo":
            continue
        assert not any(m.split(".")[0] in ("training", "serving", "experiments") for m in top.union(*nested)), name
        assert not nested, f"{name} imports {nested} inside a function"


def test_the_commands_import_downward_and_no_command_imports_another():
    """The floors: reszoo, then training.common (what every command shares), then the
    commands; serving reaches training only through training.common."""
    for name, (top, nested) in _graph().items():
        imported = {m for m in top.union(*nested) if m.split(".")[0] in PACKAGES[1:]}
        if name.startswith(COMMON):
            assert all(m.startswith(COMMON) for m in imported), (name, imported)
        mine = _command_of(name)
        others = {_command_of(m) for m in imported} - {None, mine}
        if name.startswith("serving"):
            assert all(m.startswith(("serving", COMMON)) for m in imported), (name, imported)
        assert not others, f"{name} imports the commands {others}"


def test_no_function_level_import_of_a_project_module_but_the_command_loader():
    """Each command is a light module (its flags) and a heavy body, each with its imports at
    the top; ``training.common.command.run`` loads the body by name once the flags are parsed,
    the one import inside a function."""
    found = {name: nested for name, (_, nested) in _graph().items() if nested}
    assert found == {}
    assert "importlib.import_module(body)" in (ROOT / "training/common/command.py").read_text()


def test_one_create_model():
    import warnings

    import reszoo
    from reszoo import weights

    assert reszoo.create_model.__module__ == "reszoo.api"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = weights.create_model("ResNet50", input_shape=(32, 32, 3), include_top=False)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "keras_applications_model" in str(caught[0].message)
    assert reszoo.build_spec(model).overrides["variant"] == "keras"


HELP_PROBE = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write("tensorflow imported\\n" if "tensorflow" in sys.modules else ""))
sys.argv = [{path!r}, "--help"]  # as python -m sets it
runpy.run_module({module!r}, run_name="__main__")
"""


@pytest.mark.parametrize("module, flags", [
    ("training.train", ["model", "dataset", "recipe", "init_from", "adapters", "distribution_strategy", "export"]),
    ("training.export", ["model_dir", "checkpoint", "export_dir", "formats", "top_k"]),
    ("training.predict", ["saved_model", "top"]),
    ("training.validate", ["model_dir", "weights", "dataset", "test_size", "crop_pct", "results_csv"]),
    ("serving", ["model_base_path", "model_config_file", "runtime", "port", "grpc_port", "max_batch_size", "drain_ms"]),
])
def test_help_lists_the_command_s_own_flags_without_starting_tensorflow(module, flags):
    path = ROOT / module.replace(".", "/")
    path = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE.format(module=module, path=str(path))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python -m {module} [--flag=value ...]")
    for flag in flags:
        assert f"  --{flag}=" in proc.stdout or f"  --[no]{flag}\n" in proc.stdout, flag
    if module == "training.train":  # each recipe, with every flag it sets
        from training import recipes

        text = " ".join(proc.stdout.split())
        for name in recipes.RECIPES:
            assert f"{name}: --" in text and "--lr_batch_base=2048" in text, name


def test_train_help_groups_every_flag():
    import training.train  # noqa: F401  (defines the flags)
    from training import flags

    names = {f.name for f in flags.FLAGS.get_key_flags_for_module(flags)}
    grouped = [name for group in flags.TRAIN_GROUPS.values() for name in group]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))


def test_readme_s_layout_shows_every_module_on_a_line_and_each_has_a_docstring():
    text = (ROOT / "README.md").read_text()
    tree = text[text.index("## Layout"):].split("```")[1]
    listed, folders = set(), []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name)
        elif name.endswith(".py"):
            listed.add("".join(folders) + name)
    modules = {str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    assert sorted(modules - listed) == [] and sorted(listed - modules - {"reszoo_cli.py"}) == []
    for module in modules:
        assert ast.get_docstring(ast.parse((ROOT / module).read_text())), f"{module} has no docstring"
