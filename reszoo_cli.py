"""The console commands ``reszoo-train``, ``reszoo-export``, ``reszoo-predict``,
``reszoo-serve`` and ``reszoo-validate`` (setup.py's entry points), which run
``python -m training.train``, its siblings and ``python -m serving`` from any folder. A module of
its own, beside the ``reszoo`` library and the ``training`` and ``serving`` commands: the library
imports neither its callers nor this launcher.

reszoo installs its commands as the top-level packages ``training`` and ``serving``, names
another project may also use. Each command first checks that the package it imports is
reszoo's, and otherwise says which one shadows it, in one line, instead of failing inside a
foreign module.
"""

import importlib
import sys


def _command(module):
    name = module.split(".")[0]
    try:
        package = importlib.import_module(name)
    except ImportError as err:
        _fail(f"reszoo's {name} package cannot be imported ({err}); reinstall reszoo")
    if not getattr(package, "RESZOO", False):
        _fail(f"the package {name!r} at {getattr(package, '__file__', None) or package.__path__} is not "
              "reszoo's (another project installs a package of that name): uninstall it or install reszoo "
              "in its own environment")
    return importlib.import_module(module).cli()


def _fail(message):
    sys.stderr.write(f"reszoo: error: {message}\n")
    sys.exit(1)


def train():
    _command("training.train")


def export():
    _command("training.export")


def predict():
    _command("training.predict")


def serve():
    _command("serving.__main__")


def validate():
    _command("training.validate")
