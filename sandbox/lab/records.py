"""Result and cache files written whole: a reader sees the old file or the new one, never half of one."""

import io
import json
import os
import tempfile


def _default_mode():
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def text_of(write):
    """The text ``write(f)`` writes to a file object ``f``: for building a file before :func:`atomic_write`."""
    f = io.StringIO(newline="")
    write(f)
    return f.getvalue()


def atomic_write_json(path, obj, **dump_options):
    """``json.dump(obj)`` into ``path``, atomically (:func:`atomic_write`)."""
    atomic_write(path, json.dumps(obj, **dump_options))


def atomic_write(path, text):
    """Write ``text`` to ``path`` atomically: a temporary file beside it, then ``os.replace``.

    The file keeps the mode of the one it replaces; a new file gets the umask's usual mode
    (e.g. 0644), not the private 0600 of a temporary file. The folder must exist.

    Raises:
        OSError: the folder is missing or not writable (nothing is left behind).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = _default_mode()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    except OSError as e:  # name the file asked for, not the temporary one
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
