"""Token types of Python source from ``tokenize`` and ``ast``: one label per source character.

:func:`label_source` gives every character of a source text one of :data:`TOKEN_TYPES` (or
:data:`NO_TYPE` for whitespace and line structure). Lexical classes (keyword, string, number,
operator/delimiter, comment) come from :mod:`tokenize`; syntactic roles of names (definition
names, parameters, local and global variables, attributes, call targets, import names,
decorators, builtins) and docstrings come from :mod:`ast` node positions, which also reach the
expressions inside f-strings. Per-character labels make the alignment to any subword
tokenizer a lookup of the first labelled character of each subword (:mod:`.ttc`).

Precedence of the roles of one name, highest first: decorator (anything inside a decorator
expression, and its ``@``), definition name (``def``/``class``), parameter, import name,
builtin (a name of :mod:`builtins` that the module never binds), call target (the called name
or attribute), attribute, local variable (bound in the enclosing function), global variable
(anything else: module and class scope, free names).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import io
import keyword
import re
import token
import tokenize
from collections.abc import Iterator

import numpy as np

from ..errors import PolyglotAdaptersError

__all__ = [
    "NO_TYPE",
    "TOKEN_TYPES",
    "LabelledSource",
    "SourceError",
    "decode_source",
    "label_source",
    "lex",
    "typed_tokens",
]

TOKEN_TYPES: tuple[str, ...] = (
    "keyword",
    "builtin",
    "function_name",
    "class_name",
    "parameter",
    "local_variable",
    "global_variable",
    "attribute",
    "call",
    "import",
    "decorator",
    "string",
    "fstring",
    "number",
    "operator",
    "comment",
    "docstring",
)
"""Label names; a label's id is its index here."""
NO_TYPE = 255
"""Label id of characters that belong to no token (spaces, newlines, indentation)."""

_ID = {name: i for i, name in enumerate(TOKEN_TYPES)}
_BUILTINS = frozenset(dir(builtins))
_KEYWORDS = frozenset(keyword.kwlist)
_LEXER = re.compile(
    r"(?P<space>[ \t\f\r\n]+|\\\r?\n)"
    r"|(?P<comment>#[^\r\n]*)"
    r"|(?P<string>[rRbBuUfF]{0,2}(?:'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"""(?:[^"\\]|\\.|"(?!""))*"""'
    r"|'(?:[^\n'\\]|\\.)*'"
    r'|"(?:[^\n"\\]|\\.)*"))'
    rf"|(?P<number>{tokenize.Number})"
    r"|(?P<name>\w+)"
    rf"|(?P<op>{'|'.join(map(re.escape, sorted(token.EXACT_TOKEN_TYPES, reverse=True)))})",
    re.DOTALL,
)


class SourceError(PolyglotAdaptersError, ValueError):
    """Source that cannot be labelled: undecodable bytes, a syntax, indentation or tab error, or no code.

    Attributes:
        reason: ``undecodable``, ``syntax`` or ``empty`` (how corpus builders count skipped files).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class LabelledSource:
    """A source text and the token type of each of its characters.

    Attributes:
        text: The source (decoded, newlines as in the file).
        labels: ``(len(text),)`` uint8 label ids (index into :data:`TOKEN_TYPES`, or :data:`NO_TYPE`).
        tokens: ``(start, end)`` character offsets of the lexical tokens, in order.
    """

    text: str
    labels: np.ndarray
    tokens: tuple[tuple[int, int], ...]


def label_source(source: str | bytes, *, name: str = "<source>") -> LabelledSource:
    """Labels every character of a Python source with its token type.

    Args:
        source: The text, or the raw bytes of a file (decoded as Python does: PEP 263 coding
            cookie, UTF-8 by default, BOM honoured).
        name: How messages name the source (a file path).

    Returns:
        The decoded text and its per-character labels.

    Raises:
        SourceError: With ``reason`` ``undecodable`` (bytes not in the declared encoding),
            ``syntax`` (does not parse under this Python: syntax, indentation or tab errors) or
            ``empty`` (no token at all), in one line naming ``name`` and the line.
    """
    text = decode_source(source, name=name) if isinstance(source, bytes) else source
    try:
        tree = ast.parse(text, filename=name)
    except SyntaxError as err:  # IndentationError and TabError are SyntaxErrors
        raise SourceError(
            f"{name}:{err.lineno or '?'}: does not parse as Python {_version()} ({type(err).__name__}: {err.msg}); "
            f"fix it or label it under the Python version it targets",
            "syntax",
        ) from None
    except ValueError as err:  # e.g. NUL bytes
        raise SourceError(f"{name}: does not parse ({err}); fix the file", "syntax") from None
    starts = _line_starts(text)
    labels = np.full(len(text), NO_TYPE, dtype=np.uint8)
    roles = _Roles(text, starts)
    roles.run(tree)
    previous = ""
    spans: list[tuple[int, int]] = []
    docstrings, doc = sorted(roles.docstrings), 0
    names, decorator_at = roles.names, roles.decorator_at
    for kind, start, end, string in lex(text):
        if kind == "name":
            if previous == "def":
                label = _ID["function_name"]
            elif previous == "class":
                label = _ID["class_name"]
            elif string in _KEYWORDS:
                label = _ID["keyword"]
            else:
                label = names.get(start, -1)
                if label == -1:
                    label = _ID["keyword"] if keyword.issoftkeyword(string) else _ID["global_variable"]
        elif kind == "op":
            label = _ID["decorator"] if start in decorator_at else _ID["operator"]
        elif kind == "string":
            while doc < len(docstrings) and docstrings[doc][1] <= start:
                doc += 1
            if doc < len(docstrings) and docstrings[doc][0] <= start:
                label = _ID["docstring"]
            else:
                quote = min(i for i in (string.find("'"), string.find('"')) if i >= 0)
                label = _ID["fstring"] if "f" in string[:quote].lower() else _ID["string"]
        elif kind == "number":
            label = _ID["number"]
        else:
            label = _ID["comment"]
        labels[start:end] = label
        spans.append((start, end))
        previous = string
    if not spans:
        raise SourceError(f"{name}: holds no code (empty, blank lines only); pass a Python file with code", "empty")
    # Names inside f-strings (one STRING token in this Python) and decorator expressions get their roles.
    for start, end, label in roles.spans:
        labels[start:end] = label
    return LabelledSource(text=text, labels=labels, tokens=tuple(spans))


def lex(text: str) -> Iterator[tuple[str, int, int, str]]:
    """The lexical tokens of source that parses: ``(kind, start, end, text)`` with character offsets.

    ``kind`` is ``name`` (identifiers and keywords), ``op``, ``string``, ``number`` or ``comment``:
    the tokens :func:`tokenize.generate_tokens` yields as NAME, OP, STRING, NUMBER and COMMENT,
    with the same spans (tested on the standard library), from ``tokenize``'s own number and
    operator expressions applied to the whole text at once: several times faster than its line
    loop. Whitespace, line breaks and indentation yield nothing.
    """
    for match in _LEXER.finditer(text):
        kind = match.lastgroup
        if kind != "space":
            yield kind, match.start(), match.end(), match.group()


def typed_tokens(labelled: LabelledSource) -> Iterator[tuple[int, int, str, str]]:
    """Each lexical token with its type: ``(line, column, type, text)``, 1-based line, 0-based column.

    A token whose characters have several types (an f-string with names inside) yields one item
    per run of equally typed characters; a multi-line token (a docstring) yields its first line.
    """
    text, labels = labelled.text, labelled.labels
    line, line_start, at = 1, 0, 0
    for start, end in labelled.tokens:
        i = start
        while i < end:
            j = i + 1
            while j < end and labels[j] == labels[i]:
                j += 1
            line += text.count("\n", at, i)
            line_start = text.rfind("\n", 0, i) + 1
            at = i
            piece = text[i:j].split("\n", 1)[0]
            yield line, i - line_start, TOKEN_TYPES[labels[i]], piece
            i = j


def decode_source(data: bytes, *, name: str = "<source>") -> str:
    """Decodes a file's bytes as Python does (PEP 263 coding cookie, UTF-8 by default, BOM dropped).

    Raises:
        SourceError: ``undecodable``, naming ``name`` and the line of the first bad byte.
    """
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as err:
        line = data[: getattr(err, "start", 0)].count(b"\n") + 1
        raise SourceError(
            f"{name}:{line}: bytes not in the declared encoding ({_first_line(err)}); save it as UTF-8 or declare "
            f"its encoding (PEP 263)",
            "undecodable",
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _first_line(err: BaseException) -> str:
    text = getattr(err, "msg", None) or getattr(err, "reason", None) or str(err)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__


def _version() -> str:
    import sys

    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _line_starts(text: str) -> list[int]:
    """Offset of the first character of each line (as ``tokenize`` splits lines), plus one past the end."""
    starts, offset = [0], 0
    for line in io.StringIO(text):
        offset += len(line)
        starts.append(offset)
    starts.append(offset)  # tokenize's ENDMARKER and DEDENTs sit on the line after the last one
    return starts


class _Scope:
    """A function's scope: names it binds and names it declares ``global``/``nonlocal``."""

    __slots__ = ("bound", "declared", "parent")

    def __init__(self, parent: _Scope | None) -> None:
        self.bound: set[str] = set()
        self.declared: set[str] = set()
        self.parent = parent

    def binds(self, name: str) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.bound and name not in scope.declared:
                return True
            scope = scope.parent
        return False


_LEAVES = (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)
_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(kind: type) -> tuple[str, ...]:
    found = _FIELDS.get(kind)
    if found is None:
        found = _FIELDS[kind] = tuple(f for f in kind._fields if f not in ("ctx", "op", "ops", "type_comment"))
    return found


class _Roles:
    """Collects name roles by source offset in one pass over the AST.

    Name uses are resolved after the pass, when every scope's bindings are known (a name used
    before its assignment in a loop is still local).

    Attributes:
        names: Start offset of a name token to its label (for tokens ``tokenize`` sees as NAME).
        spans: ``(start, end, label)`` applied after the token pass: names inside f-strings and
            every token of a decorator expression.
        docstrings: ``(start, end)`` offsets of docstrings (one or more implicitly joined strings).
        decorator_at: Offsets of the ``@`` of decorators.
    """

    def __init__(self, text: str, starts: list[int]) -> None:
        self.text, self.starts = text, starts
        self.names: dict[int, int] = {}
        self.spans: list[tuple[int, int, int]] = []
        self.docstrings: list[tuple[int, int]] = []
        self.decorator_at: set[int] = set()
        self.module_bound: set[str] = set()
        self._uses: list[tuple[int, int, str, _Scope | None, bool]] = []
        self._fstring_marks: list[tuple[int, int]] = []
        self._ascii: dict[int, bool] = {}

    def run(self, tree: ast.Module) -> None:
        """Scans a module and resolves every name use."""
        self._docstring(tree)
        self._scan(tree, None, False)
        for start, length, name, scope, in_fstring in self._uses:
            if scope is not None and scope.binds(name):
                label = "local_variable"
            elif name in _BUILTINS and name not in self.module_bound:
                label = "builtin"
            else:
                label = "global_variable"
            self._mark(start, length, label, in_fstring)
        for start, length in self._fstring_marks:
            self.spans.append((start, start + length, self.names[start]))

    def offset(self, line: int, col: int) -> int:
        """Character offset of an AST position (``col`` counts UTF-8 bytes)."""
        base = self.starts[line - 1]
        if col:
            ascii_line = self._ascii.get(line)
            if ascii_line is None:
                ascii_line = self._ascii[line] = self.text[base : self.starts[line]].isascii()
            if not ascii_line:
                piece = self.text[base : self.starts[line]].encode("utf-8")[:col]
                col = len(piece.decode("utf-8", errors="ignore"))
        return base + col

    def _mark(self, start: int, length: int, label: str, in_fstring: bool) -> None:
        label_id = _ID[label]
        if _RANK[label_id] > _RANK.get(self.names.get(start, -1), -1):
            self.names[start] = label_id
        if in_fstring:
            self._fstring_marks.append((start, length))

    def _bind(self, name: str, scope: _Scope | None) -> None:
        (scope.bound if scope is not None else self.module_bound).add(name)

    def _docstring(self, node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        body = node.body
        if body and type(body[0]) is ast.Expr and type(body[0].value) is ast.Constant:
            if isinstance(body[0].value.value, str):
                expr = body[0]
                start = self.offset(expr.lineno, expr.col_offset)
                self.docstrings.append((start, self.offset(expr.end_lineno, expr.end_col_offset)))

    def _decorators(self, decorators: list[ast.expr]) -> None:
        for expr in decorators:
            start = self.offset(expr.lineno, expr.col_offset)
            at = self.text.rfind("@", 0, start)
            self.decorator_at.add(at)
            self.spans.append((at, self.offset(expr.end_lineno, expr.end_col_offset), _ID["decorator"]))

    def _scan(self, node: ast.AST, scope: _Scope | None, in_fstring: bool) -> None:  # noqa: C901
        kind = type(node)
        if kind is ast.Name:
            start = self.offset(node.lineno, node.col_offset)
            if type(node.ctx) is not ast.Load:
                self._bind(node.id, scope)
            self._uses.append((start, len(node.id), node.id, scope, in_fstring))
            return
        if kind is ast.Attribute:
            self._scan(node.value, scope, in_fstring)
            start = self.offset(node.end_lineno, node.end_col_offset - len(node.attr.encode("utf-8")))
            self._mark(start, len(node.attr), "attribute", in_fstring)
            return
        if kind is ast.Call:
            func = node.func
            if type(func) is ast.Name:
                self._mark(self.offset(func.lineno, func.col_offset), len(func.id), "call", in_fstring)
            elif type(func) is ast.Attribute:
                start = self.offset(func.end_lineno, func.end_col_offset - len(func.attr.encode("utf-8")))
                self._mark(start, len(func.attr), "call", in_fstring)
        elif kind is ast.FunctionDef or kind is ast.AsyncFunctionDef or kind is ast.Lambda:
            self._function(node, scope, in_fstring)
            return
        elif kind is ast.ClassDef:
            self._bind(node.name, scope)
            self._decorators(node.decorator_list)
            self._docstring(node)
            for child in [*node.bases, *node.keywords, *node.body]:
                self._scan(child, scope, in_fstring)
            return
        elif kind is ast.keyword:
            if node.arg is not None:
                self._mark(self.offset(node.lineno, node.col_offset), len(node.arg), "parameter", in_fstring)
        elif kind is ast.Import or kind is ast.ImportFrom:
            for alias in node.names:
                self._bind((alias.asname or alias.name).split(".")[0], scope)
            start = self.offset(node.lineno, node.col_offset)
            end = self.offset(node.end_lineno, node.end_col_offset)
            for at, name in _names_in(self.text[start:end]):
                if not keyword.iskeyword(name):
                    self.names[start + at] = _ID["import"]
            return
        elif kind is ast.Global or kind is ast.Nonlocal:
            if scope is not None:
                scope.declared.update(node.names)
            return
        elif kind is ast.ExceptHandler:
            if node.name:
                self._bind(node.name, scope)
        elif kind is ast.JoinedStr:
            in_fstring = True
        for field in _fields(kind):
            value = getattr(node, field)
            if type(value) is list:
                for child in value:
                    if isinstance(child, ast.AST) and not isinstance(child, _LEAVES):
                        self._scan(child, scope, in_fstring)
            elif isinstance(value, ast.AST) and not isinstance(value, _LEAVES):
                self._scan(value, scope, in_fstring)

    def _function(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, scope: _Scope | None, in_fstring: bool
    ) -> None:
        args = node.args
        for expr in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self._scan(expr, scope, in_fstring)
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        inner = _Scope(scope)
        if type(node) is ast.Lambda:
            body: list[ast.AST] = [node.body]
        else:
            self._bind(node.name, scope)
            self._decorators(node.decorator_list)
            self._docstring(node)
            for arg in every:
                if arg is not None and arg.annotation is not None:
                    self._scan(arg.annotation, scope, in_fstring)
            if node.returns is not None:
                self._scan(node.returns, scope, in_fstring)
            body = node.body
        for arg in every:
            if arg is not None:
                inner.bound.add(arg.arg)
                self._mark(self.offset(arg.lineno, arg.col_offset), len(arg.arg), "parameter", in_fstring)
        for statement in body:
            self._scan(statement, inner, in_fstring)


_RANK = {
    _ID[name]: rank
    for rank, name in enumerate(
        (
            "global_variable",
            "local_variable",
            "attribute",
            "call",
            "builtin",
            "import",
            "parameter",
            "class_name",
            "function_name",
            "decorator",
        )
    )
}


def _names_in(text: str) -> Iterator[tuple[int, str]]:
    """``(offset, name)`` of the identifiers in a statement's text (an import: no strings in it)."""
    i, n = 0, len(text)
    while i < n:
        if text[i] == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif text[i].isidentifier():
            j = i + 1
            while j < n and (text[j].isidentifier() or text[j].isdigit()):
                j += 1
            yield i, text[i:j]
            i = j
        else:
            i += 1
