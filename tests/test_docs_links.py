"""Every relative link in README.md and docs/*.md points at a file that exists (and, for `page.md#anchor`, at a
heading of that page), so moving a section between pages cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)


def prose(text: str) -> str:
    """The page without its code: fenced blocks, indented blocks (4 spaces after a blank line) and code spans."""
    text = FENCE.sub("", text)
    kept, in_block, blank = [], False, True
    for line in text.splitlines():
        if line.strip():
            in_block = line.startswith("    ") and (blank or in_block)
            if not in_block:
                kept.append(line)
        blank = not line.strip()
    return re.sub(r"`[^`]*`", "", "\n".join(kept))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {where.relative_to(root)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_checker_sees_a_broken_link(tmp_path):
    """Not vacuous: a missing file, a missing heading and a link inside code (ignored) on a made-up page."""
    (tmp_path / "b.md").write_text("# Real heading\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("See [gone](gone.md), [b](b.md#real-heading), [bad](b.md#nope) and `[x](code.md)`.\n\n"
                    "    [y](indented.md)\n", encoding="utf-8")
    assert broken_links(page, tmp_path) == ["gone.md: no such file", "b.md#nope: no heading #nope in b.md"]


def test_the_design_pages_file_map_names_files_that_exist():
    """docs/design.md's "What a reader finds where" names files under src/flashdistill/: each must exist."""
    page = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    table = page.split("## What a reader finds where", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    named = {name for row in rows for name in re.findall(r"`([\w/<>]+(?:\.py|/))`", row.rsplit("|", 2)[1])}
    assert len(named) > 15
    src = ROOT / "src" / "flashdistill"
    missing = [n for n in named if "<" not in n and not (src / n).exists()]
    assert not missing, f"docs/design.md names files that are not under {src}: {missing}"
