"""The repository stands on its own: no file points outside it, and the docs' links resolve.

A user's clone holds only this repository, so no file may send the reader to a design
file that is not in it (the project's design is docs/design.md) or to a path outside the
repository, and every relative link in README.md and docs/*.md must reach a file (and,
with a #fragment, a heading) that exists.
"""
from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not match its own patterns.
FORBIDDEN = [
    ("a design file that is not in the repository", re.compile(re.escape("DESIGN" + ".md"))),
    ("a path outside the repository", re.compile(r"\.\./+" + "shared" + r"\b")),
    ("a path outside the repository", re.compile(r"/" + "work" + r"/(shared|main)\b")),
]
# Phrases that named the design file a clone does not hold, matched across line breaks.
FORBIDDEN_PHRASES = [
    ("a design file that is not in the repository", re.compile(r"\bthe\s+design\s+" + "notes" + r"\b", re.I)),
]

# Where a walk of the tree looks when git cannot list the files (a copy without .git).
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "runs", "__pycache__", ".pytest_cache", ".benchmarks",
                ".hypothesis", "node_modules"}

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(\s*)(```|~~~)")


def repository_files() -> list[Path]:
    """The files of the repository: tracked and untracked-but-not-ignored, as git lists them."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        paths = [p for p in ROOT.rglob("*")
                 if not any(part in SKIPPED_DIRS or part.endswith(".egg-info")
                            for part in p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.is_file())


def text_of(path: Path) -> str | None:
    """The file as text, or None for a binary file (data, images, compiled objects)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def without_code(text: str, inline: bool = False) -> list[tuple[int, str]]:
    """(line number, line) of the markdown outside fenced code blocks; inline code removed
    unless `inline`."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            fence = None if fence == m.group(2) else (fence or m.group(2))
            continue
        if fence is None:
            lines.append((number, line if inline else re.sub(r"`[^`]*`", "", line)))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in without_code(path.read_text(encoding="utf-8"), inline=True):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in the markdown file that is not a URL."""
    found = []
    for number, line in without_code(path.read_text(encoding="utf-8")):
        for pattern in (LINK, IMAGE):
            for m in pattern.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):   # http:, https:, mailto:, ...
                    continue
                found.append((number, target))
    return found


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with each relative link of `doc`: it leaves `root`, names no file, or names
    a heading the target markdown file does not have."""
    broken = []
    for number, target in relative_links(doc):
        file_part, _, fragment = target.partition("#")
        destination = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{doc.relative_to(root)}:{number}: ({target})"
        if not destination.is_relative_to(root):
            broken.append(f"{where} leaves the repository")
        elif not destination.exists():
            broken.append(f"{where} names no file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{where}: {destination.relative_to(root)} has no heading #{fragment}")
    return broken


def test_no_file_points_outside_the_repository():
    offences = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in FORBIDDEN:
                if pattern.search(line):
                    offences.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:120]}")
        for what, pattern in FORBIDDEN_PHRASES:
            for m in pattern.finditer(text):
                number = text.count("\n", 0, m.start()) + 1
                offences.append(f"{path.relative_to(ROOT)}:{number}: {what}: {' '.join(m.group().split())}")
    assert not offences, ("files refer to what a clone of this repository does not hold; point them at "
                          "docs/design.md or at a file in the repository:\n" + "\n".join(offences))


def test_the_design_document_has_the_numbered_sections_others_cite():
    """Code, tests and docs cite docs/design.md by section number (section 1 ... section 8)."""
    design = ROOT / "docs" / "design.md"
    assert design.is_file()
    numbers = [m.group(1) for _, line in without_code(design.read_text(encoding="utf-8"), inline=True)
               if (m := re.match(r"^## (\d+)\. ", line))]
    assert numbers == [str(n) for n in range(1, 9)], numbers


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_files_in_the_repository(doc):
    broken = broken_links(doc)
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_broken_links(tmp_path):
    """The checks above are not vacuous: a missing file, a missing heading and an escape are found."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "other.md").write_text("## 2. The metric, exactly\n", encoding="utf-8")
    doc = root / "docs" / "doc.md"
    doc.write_text("# A title\n\n[ok](#a-title) [gone](missing.md) [far](../../outside.md) "
                   "[web](https://example.org/x.md)\n[there](other.md#2-the-metric-exactly) "
                   "[no heading](other.md#3-gone) ![img](images/none.png)\n\n"
                   "```\n[in code](nowhere.md)\n```\n", encoding="utf-8")
    assert [target for _, target in relative_links(doc)] == [
        "#a-title", "missing.md", "../../outside.md", "other.md#2-the-metric-exactly", "other.md#3-gone",
        "images/none.png"]
    assert anchors(doc) == {"a-title"}
    problems = broken_links(doc, root)
    assert len(problems) == 4, problems
    assert any("missing.md) names no file" in p for p in problems)
    assert any("outside.md) leaves the repository" in p for p in problems)
    assert any("has no heading #3-gone" in p for p in problems)
    assert any("none.png) names no file" in p for p in problems)
    assert slug("Sharded evaluation (torchrun)") == "sharded-evaluation-torchrun"
    assert slug("2. The retrieval metric, exactly") == "2-the-retrieval-metric-exactly"
    for _, pattern in FORBIDDEN[1:2]:
        assert pattern.search("see " + "../" + "shared" + "/data")
    assert FORBIDDEN[0][1].search("see " + "DESIGN" + ".md section 2")
    assert not FORBIDDEN[0][1].search("see docs/design.md section 2")
    assert FORBIDDEN_PHRASES[0][1].search("the one of the design\n" + "notes (section 2)")
