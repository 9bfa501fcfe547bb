"""What every command shares at its top: one clear line for what goes wrong
(``CommandError``, printed as one line with its exit code, and the lines for an ``OSError`` or
any exception), its flags parser and ``--help``, and ``run``, which loads the command's heavy
body once its flags are parsed. Standard library and absl only, so a command can say all this
before anything heavy is imported."""

import errno
import gc
import importlib
import importlib.util
import os
import re
import sys
import textwrap

from absl import app, flags

KERAS_APPLICATIONS_PREFIX = "keras_applications:"  # --init_from=keras_applications:NAME (train, serve)
MAX_IMAGE_SIZE = 4096  # pixels a side: the largest image a command resizes to, or a server decodes


class CommandError(Exception):
    """A problem the user can act on: the command prints it as one line and exits with
    ``code`` (2 for a usage error)."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def os_error_message(err, path):
    """One line for an ``OSError`` met while writing ``path``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device of {path}"
    if err.errno == errno.EROFS:
        return f"{path} is on a read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {path}"
    return f"cannot write {path}: {err.strerror or err}"


def first_line(err):
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def error_reason(err):
    """The reason in a TensorFlow error, without its ``{{function_node ...}}`` and ``[Op:...]``
    wrapping (e.g. "Unknown image file format. One of JPEG, ... required")."""
    message = getattr(err, "message", None) or str(err)
    line = message.strip().splitlines()[0] if message.strip() else ""
    line = re.sub(r"^(\{\{[^}]*\}\}\s*)+", "", line)
    return line.split(" [Op:")[0].strip().rstrip(".") or type(err).__name__


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def parser(module, doc, *, run_as, name=None, groups=None, args="", aliases=None):
    """absl's flags parser for the command ``python -m run_as`` (``reszoo-NAME``; ``name``
    defaults to ``run_as``'s last part), whose flags ``module`` defines: a bad flag is one line,
    ``NAME: error: ...``, and exit code 2 (not a usage dump); ``--help`` lists the command's own
    flags, grouped as ``groups`` says (``{title: [names]}``; the rest under "flags"), after the
    first paragraph of ``doc``, and exits 0. absl's ``--helpfull`` still lists every flag of
    every module. ``args`` names the positional arguments in the usage line; ``aliases``
    rewrites whole arguments first (``{"--diagnostics": "--diagnostics=100"}``)."""
    name = name or run_as.rsplit(".", 1)[-1]

    def parse(argv):
        argv = [(aliases or {}).get(arg, arg) for arg in argv]
        prog = os.path.splitext(os.path.basename(argv[0]))[0] if argv else ""
        console = prog.startswith("reszoo-")
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            usage = prog if console else f"python -m {run_as}"
            sys.stdout.write(help_text(f"{usage} [--flag=value ...]{args}", module, doc, groups or {}))
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:
            sys.stderr.write(f"{prog if console else name}: error: {err}\n")
            sys.exit(2)

    return parse


def import_body(body):
    """The module ``body`` imported with Python's cyclic garbage collector paused, then what the
    import made moved out of its reach (``gc.freeze``): TensorFlow's and Keras' hundreds of
    thousands of module objects live as long as the process, and scanning them again and again
    took about a fifth of a TensorFlow start here (perf: ``gc_collect_main``), and time on
    every later full collection."""
    gc.disable()
    try:
        return importlib.import_module(body)
    finally:
        gc.freeze()
        gc.enable()


def run(body, module, doc, *, run_as, name=None, requires=None, check=None, **parser_args):
    """Parse the command's flags (``parser``), then import its heavy body, the module named
    ``body``, and run its ``main(argv)``: the one place a command imports a module by name, so
    ``--help`` and a bad flag never start TensorFlow. ``requires`` maps the packages the body
    needs to the line (exit 2) that says how to install one that is missing; ``check()``
    says what is wrong with the flags as a whole (exit 2), or None. A command run this way takes
    no positional arguments."""
    name = name or run_as.rsplit(".", 1)[-1]

    def main(argv):
        problems = [f"unexpected arguments {argv[1:]}" if len(argv) > 1 else None,
                    check() if check else None] + [
            line for package, line in (requires or {}).items() if importlib.util.find_spec(package) is None]
        for problem in filter(None, problems):
            sys.stderr.write(f"{name}: error: {problem}\n")
            sys.exit(2)
        return import_body(body).main(argv)

    app.run(main, flags_parser=parser(module, doc, run_as=run_as, name=name, **parser_args))


def help_text(usage, module, doc, groups):
    """The ``--help`` of a command: usage, the first paragraph of ``doc``, and each flag of
    ``module`` with its default and help, in ``groups``."""
    own = {flag.name: flag for flag in flags.FLAGS.get_key_flags_for_module(module)}
    placed = {name for names in groups.values() for name in names}
    rest = sorted(name for name in own if name not in placed)
    sections = [*groups.items(), *([("flags" if not groups else "other", rest)] if rest else [])]
    lines = [f"usage: {usage}", ""]
    summary = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    if summary:
        lines += [summary, ""]
    for title, names in sections:
        lines.append(f"{title}:")
        for name in names:
            lines.append(_flag_line(own[name]))
        lines.append("")
    lines.append("--helpfull lists absl's own flags too.")
    return "\n".join(lines) + "\n"


def _flag_line(flag):
    if flag.flag_type() == "bool":
        usage = f"--[no]{flag.name}"
    else:
        usage = f"--{flag.name}=" + ("|".join(flag.parser.enum_values) if hasattr(flag.parser, "enum_values")
                                     else flag.flag_type().split()[-1].upper())
    text = re.sub(r"^<[^>]*>: ", "", flag.help)  # absl's enum prefix; the usage shows the values
    default = flag.default
    if isinstance(default, list):
        default = ",".join(map(str, default))
    shown = f"{text} (default: {default!r})" if default not in (None, "", []) else text
    return f"  {usage}\n" + textwrap.fill(shown, 100, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                          break_on_hyphens=False, break_long_words=False)
