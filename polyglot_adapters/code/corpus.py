"""The Python code corpus: source files of the standard library (and chosen installed packages).

:func:`load_code_corpus` reads every ``*.py`` file under the interpreter's standard library
(test suites and ``site-packages`` left out) and, optionally, under installed packages,
decodes it as Python does, drops exact duplicates and files that do not parse, and splits the
rest by top-level module (a package's files stay together, so held-out modules are unseen):
80% / 10% / 10% of top-level modules by a hash of their name. Skipped files are counted by
reason, never fatal. :meth:`CodeCorpus.functions` extracts documented functions for code
search: the docstring's first paragraph is the query and the function without its docstring
is the code.

The corpus depends on the interpreter's version (its standard library); the statistics name it.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .token_types import SourceError, decode_source

__all__ = [
    "SPLITS",
    "CodeCorpus",
    "CodeFile",
    "CodeFunction",
    "extract_functions",
    "load_code_corpus",
    "split_of",
]

SPLITS = ("train", "valid", "test")
_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class CodeFile:
    """One source file of the corpus.

    Attributes:
        path: Path relative to its root (``email/parser.py``).
        module: Dotted module name (``email.parser``).
        split: ``train``, ``valid`` or ``test``.
        text: The decoded source.
    """

    path: str
    module: str
    split: str
    text: str


@dataclasses.dataclass(frozen=True)
class CodeFunction:
    """A documented function for code search.

    Attributes:
        module: Dotted module name of its file.
        name: Qualified name inside the module (``Class.method``).
        query: The docstring's first paragraph, whitespace collapsed.
        code: The function's source without its docstring, dedented.
    """

    module: str
    name: str
    query: str
    code: str


def split_of(module: str) -> str:
    """The split of a module: a stable hash of its top-level name (80% train, 10% valid, 10% test)."""
    top = module.split(".")[0]
    bucket = int.from_bytes(hashlib.sha256(top.encode()).digest()[:4], "big") % 10
    return "train" if bucket < 8 else "valid" if bucket == 8 else "test"


@dataclasses.dataclass
class CodeCorpus:
    """Deduplicated, parseable Python files split by module, with how the rest were skipped.

    Attributes:
        files: Kept files, sorted by root and path.
        skipped: Reason (``syntax``, ``undecodable``, ``empty``, ``duplicate``) to skipped paths.
        roots: The directories that were read.
    """

    files: list[CodeFile]
    skipped: dict[str, list[str]]
    roots: list[str]

    def split(self, name: str) -> list[CodeFile]:
        """The files of one split.

        Raises:
            ConfigError: For a split name other than ``train``, ``valid``, ``test``.
        """
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return [f for f in self.files if f.split == name]

    def functions(self, split: str, *, min_query_words: int = 3, min_code_lines: int = 2) -> list[CodeFunction]:
        """Documented functions of one split, deduplicated by query and by code (first kept)."""
        seen_queries: set[str] = set()
        seen_code: set[str] = set()
        out = []
        for file in self.split(split):
            for function in extract_functions(file, min_query_words=min_query_words, min_code_lines=min_code_lines):
                if function.query in seen_queries or function.code in seen_code:
                    continue
                seen_queries.add(function.query)
                seen_code.add(function.code)
                out.append(function)
        return out

    def statistics(self) -> dict[str, Any]:
        """Files and characters per split, skipped files per reason, the roots and the interpreter version."""
        per_split = {}
        for name in SPLITS:
            files = self.split(name)
            per_split[name] = {
                "files": len(files),
                "characters": sum(len(f.text) for f in files),
                "top_level_modules": len({f.module.split(".")[0] for f in files}),
                "functions": len(self.functions(name)),
            }
        return {
            "python": sys.version.split()[0],
            "roots": self.roots,
            "files": len(self.files),
            "characters": sum(len(f.text) for f in self.files),
            "splits": per_split,
            "skipped": {reason: len(paths) for reason, paths in sorted(self.skipped.items())},
        }


def load_code_corpus(
    *,
    packages: Sequence[str] = (),
    stdlib: bool = True,
    roots: Iterable[str | os.PathLike[str]] = (),
    max_bytes: int | None = None,
) -> CodeCorpus:
    """Reads, filters, deduplicates and splits the corpus (a few seconds for the standard library).

    Args:
        packages: Installed top-level packages to add (``click``, ``numpy``), found by import
            machinery without importing them.
        stdlib: Include the interpreter's standard library.
        roots: Other directories to read (every ``*.py`` below them).
        max_bytes: Skip files larger than this (counted as ``too_large``); ``None`` keeps all
            (long files are chunked downstream).

    Returns:
        The corpus.

    Raises:
        ConfigError: An unknown package, a root that is not a directory, or nothing to read.
    """
    tops: list[tuple[Path, str]] = []  # (directory, module prefix)
    if stdlib:
        tops.append((Path(sysconfig.get_paths()["stdlib"]), ""))
    for package in packages:
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or spec.origin is None and not spec.submodule_search_locations:
            raise ConfigError(f"package {package!r} is not installed; pass the name of an installed top-level package")
        if spec.submodule_search_locations:
            tops.append((Path(next(iter(spec.submodule_search_locations))), f"{package}."))
        else:
            tops.append((Path(spec.origin), ""))
    for root in roots:
        if not Path(root).is_dir():
            raise ConfigError(f"{root}: not a directory; pass a directory of Python files")
        tops.append((Path(root), ""))
    if not tops:
        raise ConfigError("nothing to read: enable the standard library or pass packages or roots")

    files: list[CodeFile] = []
    skipped: dict[str, list[str]] = {}
    seen: set[str] = set()
    for top, prefix in tops:
        for path in _python_files(top):
            relative = path.name if top.is_file() else path.relative_to(top).as_posix()
            module = prefix + relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            shown = f"{top}/{relative}" if not top.is_file() else str(top)
            data = path.read_bytes()
            if max_bytes is not None and len(data) > max_bytes:
                skipped.setdefault("too_large", []).append(shown)
                continue
            try:
                text = _check(data, shown)
            except SourceError as err:
                skipped.setdefault(err.reason, []).append(shown)
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                skipped.setdefault("duplicate", []).append(shown)
                continue
            seen.add(digest)
            files.append(CodeFile(path=relative, module=module.rstrip("."), split=split_of(module), text=text))
    return CodeCorpus(files=files, skipped=skipped, roots=[str(t) for t, _ in tops])


def _python_files(top: Path) -> list[Path]:
    if top.is_file():
        return [top]
    found = []
    for directory, subdirs, names in os.walk(top):
        subdirs[:] = sorted(d for d in subdirs if d not in _EXCLUDED_DIRS and not d.startswith("."))
        found.extend(Path(directory, n) for n in sorted(names) if n.endswith(".py"))
    return found


def _check(data: bytes, name: str) -> str:
    """Decodes and parses a file; returns its text.

    Raises:
        SourceError: Undecodable, not parseable, or empty.
    """
    text = decode_source(data, name=name)
    if not text.strip():
        raise SourceError(f"{name}: holds no code (empty, blank lines only)", "empty")
    try:
        ast.parse(text, filename=name)
    except (SyntaxError, ValueError) as err:
        raise SourceError(f"{name}: does not parse ({type(err).__name__})", "syntax") from None
    return text


def extract_functions(file: CodeFile, *, min_query_words: int = 3, min_code_lines: int = 2) -> list[CodeFunction]:
    """Documented functions (and methods) of one file with their query and docstring-free code.

    Args:
        file: A corpus file.
        min_query_words: Shortest query kept.
        min_code_lines: Fewest code lines (signature included) kept.
    """
    tree = ast.parse(file.text)
    lines = file.text.splitlines()
    out = []
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                stack.append((child, f"{prefix}{child.name}."))
                found = _function(child, lines, f"{prefix}{child.name}", file.module, min_query_words, min_code_lines)
                if found is not None:
                    out.append(found)
    out.sort(key=lambda f: f.name)
    return out


def _function(
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    lines: list[str],
    name: str,
    module: str,
    min_query_words: int,
    min_code_lines: int,
) -> CodeFunction | None:
    docstring = ast.get_docstring(node, clean=False)
    if not docstring or len(node.body) < 2:
        return None
    query = " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())
    if len(query.split()) < min_query_words:
        return None
    doc = node.body[0]
    kept = lines[node.lineno - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    if doc.lineno == node.lineno:  # ``def f(): "doc"; ...`` on one line: no clean cut
        return None
    code = textwrap.dedent("\n".join(kept)).strip("\n")
    if len(code.splitlines()) < min_code_lines:
        return None
    return CodeFunction(module=module, name=name, query=query, code=code)
