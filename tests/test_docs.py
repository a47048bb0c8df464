"""The docs name only what exists: every repository path, module and ``module.attribute`` in README.md and docs/*.md.

What is checked, in inline code and in relative links (fenced code blocks are commands, not names):

- ``urd_lightning.x.y`` (and ``urd_lightning.x.y.name``): the module imports and the attribute exists;
- ``path/to/file.py::Name`` or ``::Class.method``: the file exists and defines the name (read with ``ast``, so test
  files are not imported);
- repository paths (``src/...``, ``configs/...``, ``models/urd.py``, ``configs/data/<benchmark>.yaml``): the file or
  folder exists, relative to the repository root, the package folder, ``configs/`` or the document's folder;
  ``<placeholder>`` and ``*`` match any name;
- a bare ``name.py``: some file of that name exists in the repository;
- ``Class.attribute`` where ``Class`` is one of the package's classes: the attribute exists;
- relative Markdown links: the target exists, and a ``#fragment`` into a Markdown file names one of its headings.

Paths that a run creates (``results/...``, ``checkpoints/last.ckpt``) start with no repository folder and are left
alone. The authors' own file names, which the method notes mention, are listed in ``OUTSIDE``.

And the other way round: no file of the project cites what is not in it (notes outside the repository, issue
numbers, who decided).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from functools import cache
from pathlib import Path

import pytest

import urd_lightning

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "urd_lightning"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Where a relative path may start: the repository root, the package (docs say `models/urd.py`), the configs.
BASES = (ROOT, PACKAGE, ROOT / "configs")
# Where a bare file name (`hardware.py`) may live: never the virtual environment or data below the root.
SOURCE_DIRS = ("src", "tests", "experiments", "configs", "docs", ".ci")
# File names of the authors' released code (not this repository), as the docs cite them.
OUTSIDE = {"train.py::train_one_epoch", "train.py::test", "train_visa.py", "dataset_noise.py", "perlin.py"}

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TOKEN_SPLIT = re.compile(r"[\s=,;()\[\]\"']+")
PATHLIKE = re.compile(r"^[\w.\-/<>*{}]+$")
EXTENSIONS = (".py", ".yaml", ".md", ".toml", ".txt", ".json", ".sbatch", ".sh", ".cfg", ".ini")


def _inline(text: str) -> str:
    return FENCE.sub("", text)


def _names(doc: Path) -> list[str]:
    """Every token of every inline code span of ``doc``."""
    tokens = []
    for span in SPAN.findall(_inline(doc.read_text(encoding="utf-8"))):
        tokens += [t.rstrip(".:") for t in TOKEN_SPLIT.split(span) if t]
    return tokens


def _top_entries() -> set[str]:
    """First path components that mean "a file of this repository"."""
    names = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".ci"}
    names |= {p.name for p in PACKAGE.iterdir()}
    names |= {p.name for p in (ROOT / "configs").iterdir()}
    return names - {"results", "datasets", "__pycache__", ".venv", "build", "dist"}


TOP = _top_entries()


@cache
def _package_classes() -> dict[str, list[type]]:
    """Every class defined in the package, by name (several modules may define one name)."""
    found: dict[str, list[type]] = {}
    for info in pkgutil.walk_packages(urd_lightning.__path__, "urd_lightning."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == info.name:
                found.setdefault(name, []).append(obj)
    return found


def _glob_exists(base: Path, rel: str) -> bool:
    pattern = re.sub(r"<[^>]*>|\{[^}]*\}", "*", rel.rstrip("/"))
    if "*" in pattern:
        return any(base.glob(pattern))
    return (base / pattern).exists()


def _path_exists(rel: str, doc: Path) -> bool:
    return any(_glob_exists(base, rel) for base in (*BASES, doc.parent))


def _defines(path: Path, qualname: str) -> bool:
    """Whether the Python file defines ``qualname``: a function, class or assignment, or a member of a class."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for part in qualname.split("."):
        found = None
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part for t in node.targets):
                found = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == part:
                found = node
        if found is None:
            # Instance attributes set in a method (``self.part = ...``) count for a class.
            return any(isinstance(n, ast.Attribute) and n.attr == part and isinstance(n.ctx, ast.Store)
                       for node in body for n in ast.walk(node))
        body = getattr(found, "body", [])
    return True


def _module_attr_problem(dotted: str) -> str | None:
    """None when ``urd_lightning.a.b[.name...]`` imports and resolves, else why not."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for i, attr in enumerate(parts[cut:], start=cut):
            if not hasattr(obj, attr):
                try:
                    obj = importlib.import_module(".".join(parts[: i + 1]))
                except ModuleNotFoundError:
                    return f"{'.'.join(parts[:i])} has no attribute {attr!r}"
            else:
                obj = getattr(obj, attr)
        return None
    return "no such module"


def _problem(token: str, doc: Path, last_file: str = "") -> str | None:
    """Why ``token`` names nothing in this repository, or None (also for tokens that are not names of ours)."""
    if token in OUTSIDE or token.split("::")[0] in OUTSIDE:
        return None
    if re.fullmatch(r"urd_lightning(\.\w+)+", token) and not token.endswith(EXTENSIONS):
        return _module_attr_problem(token)
    if "::" in token:
        rel, qualname = token.split("::", 1)
        rel = rel or last_file  # `::other_test` continues the file named before it
        files = [base / rel for base in BASES if (base / rel).is_file()]
        if not files:
            return f"no file {rel}"
        return None if any(_defines(f, qualname) for f in files) else f"{rel} defines no {qualname}"
    if not PATHLIKE.match(token) or token.startswith(("/", "~", "http")) or "..." in token:
        return None
    if "/" in token:
        first = token.split("/", 1)[0]
        if first not in TOP and first not in {"docs", "tests", "experiments"}:
            return None  # a path a run creates, or one on the user's machine
        return None if _path_exists(token, doc) else "no such path"
    if token.endswith((".py", ".md")) and re.fullmatch(r"[\w\-]+\.(py|md)", token):
        return None if any(any((ROOT / d).rglob(token)) for d in SOURCE_DIRS) else "no file of that name"
    match = re.fullmatch(r"([A-Z]\w+)\.(\w+)", token)
    if match and match.group(1) in _package_classes():
        classes = _package_classes()[match.group(1)]
        return None if any(hasattr(c, match.group(2)) or _class_sets(c, match.group(2)) for c in classes) \
            else f"{match.group(1)} has no attribute {match.group(2)!r}"
    return None


def _class_sets(cls: type, attr: str) -> bool:
    """Instance attributes assigned in the class's own methods (``self.attr = ...``)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return re.search(rf"self\.{attr}\b\s*(:[^=]+)?=", source) is not None


def _heading_slugs(md: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    slugs = set()
    for line in _inline(md.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def _link_problem(target: str, doc: Path) -> str | None:
    if re.match(r"^[a-z]+:", target):
        return None  # https:, mailto:
    rel, _, fragment = target.partition("#")
    path = (doc.parent / rel) if rel else doc
    if not path.exists():
        return "no such file"
    if fragment and path.suffix == ".md" and fragment not in _heading_slugs(path):
        return f"{path.name} has no heading #{fragment}"
    return None


def _problems(doc: Path) -> list[str]:
    out, last_file = [], ""
    for token in _names(doc):
        why = _problem(token, doc, last_file)
        if "::" in token and token.split("::", 1)[0]:
            last_file = token.split("::", 1)[0]
        if why:
            out.append(f"`{token}`: {why}")
    out = list(dict.fromkeys(out))
    for target in dict.fromkeys(LINK.findall(_inline(doc.read_text(encoding="utf-8")))):
        why = _link_problem(target, doc)
        if why:
            out.append(f"link ({target}): {why}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_name_in_the_docs_exists(doc):
    problems = _problems(doc)
    assert not problems, f"{doc.relative_to(ROOT)} names what does not exist:\n" + "\n".join(problems)


def test_the_check_sees_a_renamed_path(tmp_path, monkeypatch):
    """The check fails on a module, a function, a file and a link that do not exist, and passes on ones that do."""
    doc = tmp_path / "x.md"
    doc.write_text("`urd_lightning.models.URD` `models/urd.py::URD.predict` `configs/data/<benchmark>.yaml`\n"
                   "`URDModule.iteration` [design](design.md)\n")
    (tmp_path / "design.md").write_text("# Design\n")
    assert _problems(doc) == []
    doc.write_text("`urd_lightning.train.train` `models/urd.py::URD.no_such` `configs/data/nope.yaml` "
                   "`URDModule.no_such` `no_such_module.py` [gone](gone.md) [design](design.md#nowhere)\n")
    assert len(_problems(doc)) == 7, _problems(doc)


# What the project must not cite: references that live outside it, issue numbers and who decided. Spelled in
# pieces so that this file does not match itself.
FORBIDDEN = re.compile("|".join([r"urd-" + r"method\.md", r"\b[Ii]ssue " + r"#?\d", r"\bthe " + r"lead\b",
                                 r"\blead" + r"'s\b", "\u00a7", r"ecosystem" + r"\.md", r"launch-" + r"paths\.md",
                                 r"shared/" + r"(docs|data)/"]))
TEXT_SUFFIXES = (".py", ".yaml", ".md", ".toml", ".sbatch", ".sh", ".txt", "")
CITING = ("src", "configs", "experiments", "tests", "docs", ".ci", "Makefile", "README.md", "pyproject.toml")


def test_no_comment_cites_an_outside_file_an_issue_or_a_person():
    files = []
    for name in CITING:
        path = ROOT / name
        files += [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    hits = []
    for path in files:
        if path.suffix not in TEXT_SUFFIXES or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "cite docs/method.md or another file of the repository instead:\n" + "\n".join(hits)


def _method_headings() -> set[str]:
    text = _inline((ROOT / "docs" / "method.md").read_text(encoding="utf-8"))
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_citations_of_the_method_name_its_sections():
    """`docs/method.md, "Section"` and `docs/method.md#anchor` in the code and configs name a section that exists."""
    headings = _method_headings()
    slugs = _heading_slugs(ROOT / "docs" / "method.md")
    cited = re.compile(r'docs/method\.md[,:]\s*"([^"]+)"|docs/method\.md#([\w\-]+)')
    bad = []
    for name in ("src", "configs", "experiments", "tests"):
        for path in sorted((ROOT / name).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".md") or "__pycache__" in path.parts or path == Path(__file__):
                continue
            # A citation may wrap onto the next comment line: join lines, dropping comment markers.
            text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text(encoding="utf-8"))
            for title, anchor in cited.findall(text):
                ok = (anchor in slugs) if anchor else any(h == title or h.startswith(title + " ") for h in headings)
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}: {title or '#' + anchor}")
    assert not bad, "docs/method.md has no such section:\n" + "\n".join(bad)
