"""One clear line for what goes wrong in a command: ``CommandError`` (printed as one line,
with its exit code) and the lines for an ``OSError`` or any exception. Standard library only,
so a command can say it before anything heavy is imported."""

import errno


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
