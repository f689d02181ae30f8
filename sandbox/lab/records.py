"""What the lab's result files hold beside their rows, and how they are written.

- Provenance: package versions, device, the command as typed, the date (:func:`provenance`), the
  git commit of the checkout (:func:`git_commit`) and the CUDA driver and runtime versions
  (:func:`cuda_versions`).
- Files written whole (:func:`atomic_write`): a reader sees the old file or the new one, never
  half of one; CSV files with their provenance as leading ``# key: value`` lines
  (:func:`write_commented_csv`, :func:`read_commented_csv`).
"""

import csv
import datetime
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

from sandbox.lab import info
from sandbox.vocabulary.runtime import using_simulator

#: The folder that holds the ``sandbox`` package: the git checkout's root in a checkout.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def write_commented_csv(path, header, columns, rows):
    """Write ``rows`` as CSV, atomically, after ``# key: value`` lines for each item of ``header``."""
    buf = io.StringIO()
    for key, value in header.items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def read_commented_csv(path):
    """(provenance, rows as string dicts) from a CSV whose leading ``# key: value`` lines are its provenance."""
    prov, lines = {}, []
    with open(path, newline="") as f:
        for line in f:
            if line.startswith("# "):
                key, _, value = line[2:].rstrip("\n").partition(": ")
                prov[key] = value
            else:
                lines.append(line)
    return prov, list(csv.DictReader(lines))


# -- provenance ----------------------------------------------------------------------------------

def command_line(argv=None):
    """The command as the user typed it: ``python -m sandbox sweep ...`` rather than the path of
    ``sandbox/__main__.py``; ``attention-sandbox sweep ...`` for the console script."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        head = os.path.normpath(argv[0])
        if head.endswith(os.path.join("sandbox", "__main__.py")):
            argv[:1] = ["python", "-m", "sandbox"]
        elif os.path.basename(head) == "attention-sandbox":
            argv[0] = "attention-sandbox"
    return shlex.join(str(a) for a in argv)


def provenance(argv=None):
    """Package versions, device, command line and time, for the header of result files."""
    facts = {k: str(v) for k, v in info.environment().items()}
    facts["command"] = command_line(argv)
    facts["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return facts


def git_commit():
    """HEAD's commit of the checkout the package is in, "+dirty" if tracked files differ; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "-C", PACKAGE_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", PACKAGE_ROOT, "--no-optional-locks", "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cuda_versions():
    """The NVIDIA driver's version, the CUDA driver API's and toolkit's (on a GPU), and the CUDA runtimes of
    the PyTorch and CuPy already imported: what a timing depends on."""
    out = {}
    try:  # "NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  580.159.04  Release Build ..."
        with open("/proc/driver/nvidia/version") as f:
            found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", f.readline())
        out["nvidia driver"] = found.group(1) if found else "unknown"
    except OSError:
        out["nvidia driver"] = "unknown"
    if not using_simulator():
        try:
            from numba.cuda.cudadrv import driver, runtime  # not under the simulator, which has neither

            out["cuda driver api"] = ".".join(map(str, driver.get_version()))
            out["cuda toolkit (numba, nvrtc)"] = ".".join(map(str, runtime.get_version()))
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda runtime (torch)"] = str(torch.version.cuda)
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            v = cupy.cuda.runtime.runtimeGetVersion()
            out["cuda runtime (cupy)"] = f"{v // 1000}.{v % 1000 // 10}"
        except Exception:
            pass
    return out
