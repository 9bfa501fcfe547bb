"""The console commands ``reszoo-train``, ``reszoo-export``, ``reszoo-predict``,
``reszoo-serve`` and ``reszoo-validate`` (setup.py's entry points), which run
``python -m training.train`` and its siblings from any folder. A module of its own, beside the ``reszoo`` library and the
``training`` commands: the library imports neither its callers nor this launcher.

reszoo installs its commands as the top-level package ``training``, a name another project
may also use. Each command first checks that the ``training`` it imports is reszoo's, and
otherwise says which one shadows it, in one line, instead of failing inside a foreign module.
"""

import importlib
import sys


def _command(name):
    try:
        package = importlib.import_module("training")
    except ImportError as err:
        _fail(f"reszoo's training package cannot be imported ({err}); reinstall reszoo")
    if not getattr(package, "RESZOO", False):
        _fail(f"the package 'training' at {getattr(package, '__file__', None) or package.__path__} is not "
              "reszoo's (another project installs a package of that name): uninstall it or install reszoo "
              "in its own environment")
    return importlib.import_module(f"training.{name}").cli()


def _fail(message):
    sys.stderr.write(f"reszoo: error: {message}\n")
    sys.exit(1)


def train():
    _command("train")


def export():
    _command("export")


def predict():
    _command("predict")


def serve():
    _command("serve")


def validate():
    _command("validate")
