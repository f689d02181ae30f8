"""The repository holds the product: tracked paths and lines describe the software, not how it was
developed, and docs/ holds the tutorial, the README's figures and data, and one results folder per
reference machine."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Words that name the project's development history rather than the product. Built from pieces so
#: that this file does not match them itself.
HISTORY = re.compile("|".join([
    "sess" + "ion[- _]?[0-9]",
    "iss" + "ue [0-9]",
    "the " + "se" + "ed",
]), re.IGNORECASE)
#: At most this many tracked files under docs/.
MAX_DOCS_FILES = 78
#: Markdown files whose relative links and images, and the docs/ paths they cite, must be tracked.
LINKED_DOCS = ("README.md", "BENCHMARKS.md", "docs/tutorial.md")


def tracked_files():
    """Paths of the tracked files, relative to the repository root; skips outside a git checkout."""
    try:
        res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"git is not available: {e}")
    if res.returncode != 0 or not res.stdout:
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [p for p in res.stdout.decode("utf-8").split("\0") if p]


def history_mentions(paths):
    """``path`` or ``path:line: text`` for every tracked path or text line that names the history."""
    found = []
    for path in paths:
        if HISTORY.search(path):
            found.append(path)
        try:
            text = (ROOT / path).read_bytes().decode("utf-8")
        except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
            continue  # deleted in the working tree, a submodule, or a binary file
        for i, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path}:{i}: {line.strip()[:120]}")
    return found


def test_history_pattern_catches_each_form():
    for text in ["Sess" + "ion 9", "sess" + "ion-3", "sess" + "ion_7/run.log", "sess" + "ion12",
                 "see iss" + "ue 7", "The " + "se" + "ed's blockwise PyTorch"]:
        assert HISTORY.search(text), text
    for text in ["a session of work", "issue #", "seed=3", "torch.manual_seed(0)"]:
        assert not HISTORY.search(text), text


def test_no_tracked_path_or_line_names_the_development_history():
    found = history_mentions(tracked_files())
    assert not found, (f"{len(found)} tracked paths or lines name the development history; state the fact, "
                       "cite a BENCHMARKS.md section, or the blog post by its title:\n" + "\n".join(found[:40]))


def test_docs_holds_at_most_a_few_dozen_files():
    docs = [p for p in tracked_files() if p.startswith("docs/")]
    assert len(docs) <= MAX_DOCS_FILES, (
        f"{len(docs)} tracked files under docs/ (at most {MAX_DOCS_FILES}): keep the tutorial, the README's "
        "figures and data and one results folder per reference machine; raw logs stay out")


def is_tracked(path, tracked):
    """Whether ``path`` is a tracked file or a folder that holds one."""
    return path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked)


def test_relative_links_and_cited_docs_paths_point_at_tracked_files():
    tracked = set(tracked_files())
    missing = []
    for doc in LINKED_DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):
                continue  # a URL or an anchor
            path = (pathlib.PurePosixPath(doc).parent / target.split("#")[0]).as_posix()
            path = str(pathlib.PurePosixPath(*[p for p in pathlib.PurePosixPath(path).parts if p != "."]))
            if not is_tracked(path, tracked):
                missing.append(f"{doc}: {target}")
        for path in re.findall(r"`(docs/[^`\s]*)`", text):
            if not re.search(r"[A-Z*{]", path) and not is_tracked(path, tracked):
                missing.append(f"{doc}: {path}")
    assert not missing, "links to files that are not tracked:\n" + "\n".join(missing)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    (command,) = [line for line in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
                  if '".[test]"' in line]
    command = command.strip()
    assert command.endswith("python -m tests"), command  # the suite over one process per core
    assert f"{command} || tests=$?" in (ROOT / ".ci" / "run").read_text()
