"""The front page and docs/ point at things that exist: every relative link (and its #anchor), every
repository path in backticks, every test the pages cite. A file moved or renamed without its
pages fails here."""
import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "model_repo" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A path into the repository named in backticks, maybe with ::a_test; <placeholders> (generated
# files such as model_repo/tecafn/<v>/) do not match.
REPO_PATH = re.compile(r"`((?:stream|trainer|dashboard|tests|docs|model_repo)/[\w./-]*)(?:::(\w+))?`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(page: Path) -> str:
    """The page without its code blocks (a `#` there is a comment, not a heading)."""
    return FENCE.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not ours to check
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, page.parent)}")
    return broken


def functions_in(source: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(source.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def missing_paths(text: str, root: Path) -> list[str]:
    missing = []
    for path, test in REPO_PATH.findall(text):
        if not (root / path).exists():
            missing.append(path)
        elif test and test not in functions_in(root / path):
            missing.append(f"{path}::{test}")
    return missing


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_and_cited_test_exists(page):
    assert missing_paths(page.read_text(), ROOT) == []


def test_the_checks_report_what_is_missing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[ok](#a-title) [gone](nowhere.md) [no anchor](#elsewhere) ![img](page.md)\n"
                    "```\n# not a heading\n[in code](ignored.md)\n```\n[code heading](#not-a-heading)\n")
    assert broken_links(page) == ["nowhere.md: no such file", "#elsewhere: no heading #elsewhere in page.md",
                                  "#not-a-heading: no heading #not-a-heading in page.md"]
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_there():\n    pass\n")
    text = "`tests/test_x.py::test_there`, `tests/test_x.py::test_gone`, `stream/nowhere.py`, `model_repo/tecafn/<v>/`"
    assert missing_paths(text, tmp_path) == ["tests/test_x.py::test_gone", "stream/nowhere.py"]
