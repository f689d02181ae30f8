"""``python -m tests [-j N] [--write-durations] [pytest options]``: the whole suite over N pytest
processes, one core each (N defaults to the cores this process may use).

Under Numba's CUDA simulator every kernel runs as Python threads under one interpreter lock, so a
pytest process uses one core; the suite's test files are split over N processes instead, each file
whole in one process (its module-level builds and fixtures made once). Files are balanced by their
seconds in ``tests/durations.json`` (longest first, each to the least loaded process); a file not
listed there counts as the median. Each process's output is shown as it comes, its lines prefixed
with ``[k/N]``; the end gives each process's summary line, the slowest files, and one total line.

The exit status is pytest's: 1 if any test failed, 2 if interrupted, 0 if all passed, 5 only if no
process collected a test (128 + N for a process killed by signal N). Ctrl-C, SIGTERM or SIGHUP (a
CI job's timeout) reaches every process as SIGINT, the one signal on which pytest stops and still
prints its summary of what it had run; a second one kills them.
``--write-durations`` updates ``tests/durations.json`` with the seconds of the files this run timed.
Paths or node ids among the arguments, or ``-j 1``, run one plain pytest process with the arguments
as given; ``python -m pytest`` runs the same suite in one process.
"""

import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DURATIONS = pathlib.Path(__file__).resolve().parent / "durations.json"
#: pytest's exit codes that the total reports: tests failed, interrupted, no tests collected.
FAILED, INTERRUPTED, NO_TESTS = 1, 2, 5


def parse_args(argv):
    """``(jobs, write_durations, pytest_args)`` from the command line; ``jobs`` is None by default."""
    jobs, write, rest = None, False, []
    it = iter(argv)
    for arg in it:
        if arg in ("-j", "--jobs"):
            value = next(it, None)
            if value is None:
                raise SystemExit(f"python -m tests: {arg} needs a number of processes")
            jobs = value
        elif re.fullmatch(r"-j\d+|--jobs=\d+", arg):
            jobs = arg.split("=", 1)[-1].removeprefix("-j")
        elif arg == "--write-durations":
            write = True
        else:
            rest.append(arg)
    if jobs is not None:
        if not str(jobs).isdigit() or int(jobs) < 1:
            raise SystemExit(f"python -m tests: the number of processes must be a positive integer, not {jobs!r}")
        jobs = int(jobs)
    return jobs, write, rest


def default_jobs():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def names_tests(args, root=ROOT):
    """Whether ``args`` name test paths or node ids (then pytest runs them as given, in one process)."""
    return any(not a.startswith("-") and (root / a.split("::")[0]).exists() for a in args)


def test_files(root=ROOT):
    """The suite's test files, relative to ``root``, in path order."""
    return sorted(p.relative_to(root).as_posix() for p in (root / "tests").rglob("test_*.py"))


def load_durations(path=DURATIONS):
    """``{file: seconds}`` from ``path``; empty if it is missing."""
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def balance(files, seconds, jobs):
    """Split ``files`` over at most ``jobs`` groups of about equal seconds: longest first, each to the
    group with the fewest seconds so far (a file not in ``seconds`` counts as their median). Returns
    the non-empty groups, each in path order, with their expected seconds."""
    default = statistics.median(seconds.values()) if seconds else 1.0
    groups = [[0.0, []] for _ in range(max(1, min(jobs, len(files))))]
    for f in sorted(files, key=lambda f: (-seconds.get(f, default), f)):
        group = min(groups, key=lambda g: g[0])
        group[0] += seconds.get(f, default)
        group[1].append(f)
    return [(total, sorted(fs)) for total, fs in groups if fs]


#: The order of the total line's outcomes (pytest's own: failures first).
ORDER = ("failed", "passed", "skipped", "deselected", "xfailed", "xpassed", "error", "warning")
SUMMARY = re.compile(r"^=*\s*(\d+ [a-z]+(?:, \d+ [a-z]+)*) in [\d.]+s(?: \([\d:]+\))?\s*=*$")


def summary_counts(line):
    """``{outcome: count}`` from pytest's last line, e.g. ``== 3 passed, 1 skipped in 2.10s ==``
    (without the ``=`` under ``-q``); empty for any other line. Plural words are made singular (``2 warnings`` counts as warning)."""
    match = SUMMARY.match(line.strip())
    if not match:
        return {}
    counts = {}
    for part in match.group(1).split(", "):
        n, _, word = part.partition(" ")
        if n.isdigit() and word:
            word = {"warnings": "warning", "errors": "error"}.get(word, word)
            counts[word] = counts.get(word, 0) + int(n)
    return counts


def combined_status(codes):
    """One exit status for the processes' pytest exit statuses (see the module's docstring)."""
    if any(c == FAILED for c in codes):
        return FAILED
    others = [128 - c if c < 0 else c for c in codes if c not in (0, NO_TESTS)]  # -N: killed by signal N
    if others:
        return max(others)
    return NO_TESTS if codes and all(c == NO_TESTS for c in codes) else 0


class Worker:
    """One pytest process over a group of files; its output is relayed line by line with a prefix."""

    def __init__(self, index, count, files, pytest_args, times_path, lock):
        self.prefix, self.files, self.lock = f"[{index}/{count}]", files, lock
        self.summary_line, self.times_path = "", times_path
        env = dict(os.environ, PYTHONUNBUFFERED="1", ATTN_TEST_TIMES=str(times_path))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "tests.timing", *pytest_args, *files],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True)  # a terminal's Ctrl-C reaches it once, forwarded by run_parallel
        self.reader = threading.Thread(target=self._relay, daemon=True)
        self.reader.start()

    def _relay(self):
        for line in self.proc.stdout:
            if summary_counts(line):
                self.summary_line = line
            with self.lock:
                sys.stdout.write(f"{self.prefix} {line}")
                sys.stdout.flush()

    @property
    def summary(self):
        """pytest's last line without its ``=`` rule, or ""."""
        return self.summary_line.strip(" =\n")

    def wait(self):
        code = self.proc.wait()
        self.reader.join()
        return code

    def times(self):
        try:
            return json.loads(pathlib.Path(self.times_path).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}


def run_parallel(jobs, pytest_args, write_durations):
    files = test_files()
    known = load_durations()
    groups = balance(files, known, jobs)
    lock = threading.Lock()
    print(f"python -m tests: {len(files)} test files over {len(groups)} pytest processes, expected "
          + ", ".join(f"{total / 60:.0f} min" for total, _ in groups) + " (tests/durations.json)", flush=True)
    start = time.perf_counter()
    stopped = []

    def forward(signum, frame):  # Ctrl-C, or CI's timeout: every process stops and reports
        stopped.append(signum)
        stop(workers)

    def stop(ws):  # (pytest reports on SIGINT alone: on SIGTERM a process dies without its summary)
        sig = signal.SIGINT if len(stopped) == 1 else signal.SIGKILL
        for w in ws:
            if w.proc.poll() is None:
                w.proc.send_signal(sig)

    with tempfile.TemporaryDirectory() as tmp:
        workers = []
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            for i, (_, fs) in enumerate(groups):
                workers.append(Worker(i + 1, len(groups), fs, pytest_args, pathlib.Path(tmp) / f"{i}.json", lock))
                if stopped:
                    stop(workers[-1:])
            codes = [w.wait() for w in workers]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        times = {}
        for w in workers:
            times.update(w.times())
    if stopped:
        codes = [INTERRUPTED if c == 0 else c for c in codes]
    print()
    totals = {}
    for w, code in zip(workers, codes):
        print(f"{w.prefix} {len(w.files)} files, exit {code}: {w.summary or 'no summary line'}")
        for outcome, n in summary_counts(w.summary_line).items():
            totals[outcome] = totals.get(outcome, 0) + n
    if times:
        slowest = sorted(times.items(), key=lambda kv: -kv[1])[:8]
        print("slowest files: " + ", ".join(f"{f} {s:.0f} s" for f, s in slowest))
    if write_durations and times and not stopped:
        known.update({f: round(s, 1) for f, s in times.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(known.items())), indent=1) + "\n")
        print(f"updated {DURATIONS.relative_to(ROOT)} with {len(times)} files' seconds")
    status = combined_status(codes)
    order = sorted(totals, key=lambda o: (ORDER.index(o) if o in ORDER else len(ORDER), o))
    print("python -m tests: " + (", ".join(f"{totals[o]} {o}" for o in order) or "no summary")
          + f" in {time.perf_counter() - start:.0f} s over {len(workers)} processes; exit {status}", flush=True)
    return status


def main(argv=None):
    jobs, write_durations, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    jobs = default_jobs() if jobs is None else jobs
    if jobs == 1 or names_tests(pytest_args):
        return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT)
    return run_parallel(jobs, pytest_args, write_durations)


if __name__ == "__main__":
    sys.exit(main())
