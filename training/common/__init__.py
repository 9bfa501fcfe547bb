"""What every command shares, below them all (it imports no command): ``command`` (one-line
errors, the flags parser and ``--help``, the loader of a command's body), ``layout`` (the run and
export folders, every file name spelled once), ``runtimes`` (the table of files an export holds),
``engines`` (those files as callables), ``files`` (writes whole or absent), ``images`` (image
decoding), ``sources`` (the model a run starts from)."""
