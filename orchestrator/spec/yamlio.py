"""YAML loading that remembers where every key and list item came from.

PyYAML's ``SafeLoader`` semantics are kept exactly (YAML 1.1: ``no`` is ``False``, ``1e-4`` without a dot is a
*string*), but mappings load as :class:`LineDict` and sequences as :class:`LineList`, which carry the 1-based
line of the node and of each key / item, so that errors can name ``file:line``.

Plain (unquoted) scalars that PyYAML resolved to ``str`` but that look like numbers (``1e-4``, ``-1e-3``) load as
:class:`NumStr`, a ``str`` subclass: the spec parser turns them into numbers where a number is expected, while a
quoted ``"1e-4"`` stays an ordinary string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.trial.errors import SpecError

__all__ = ["LineDict", "LineList", "NumStr", "as_number", "load_yaml", "line_of", "plain"]

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class LineDict(dict[Any, Any]):
    """A dict that knows its own line (``line``) and the line of each key (``lines``)."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int | None:
        return self.lines.get(key, self.line)


class LineList(list[Any]):
    """A list that knows its own line (``line``) and the line of each item (``lines``)."""

    line: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[int] = []

    def line_of(self, index: int) -> int | None:
        return self.lines[index] if 0 <= index < len(self.lines) else self.line


class NumStr(str):
    """An unquoted scalar that YAML 1.1 reads as a string but that is written like a number (``1e-4``)."""

    __slots__ = ()


def as_number(value: Any) -> int | float | None:
    """``value`` as a number: ints/floats as they are (never bools), numeric-looking strings parsed; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        if re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        return float(text)
    return None


def plain(value: Any) -> Any:
    """A deep copy made of plain ``dict``/``list``/``str`` (markers and line information dropped)."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, NumStr):
        return str(value)
    return value


def line_of(container: Any, key: Any) -> int | None:
    """The line of ``key`` in a LineDict / LineList (the container's own line as a fallback)."""
    if isinstance(container, LineDict | LineList):
        return container.line_of(key)
    return None


class _Loader(yaml.SafeLoader):
    """SafeLoader producing LineDict / LineList / NumStr; duplicate keys are errors."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = LineDict()
    data.line = node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, NumStr):
            key = str(key)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key (a list or mapping used as a key)",
                key_node.start_mark,
            ) from None
        if key in data:
            raise _DuplicateKey(key, key_node.start_mark.line + 1, data.lines[key])
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Any:
    data = LineList()
    data.line = node.start_mark.line + 1
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.lines.append(child.start_mark.line + 1)


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    assert isinstance(value, str)
    if node.style is None and _NUMBER.match(value):
        return NumStr(value)
    return value


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:omap", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key = key
        self.line = line
        self.first = first


#: bounds on a sweeps file, checked before it is expanded (a YAML alias bomb takes bytes to write, gigabytes to load)
MAX_FILE_BYTES = 4 << 20
MAX_NODES = 1_000_000


class _TooBig(Exception):
    def __init__(self, why: str, line: int | None) -> None:
        super().__init__(why)
        self.why = why
        self.line = line


def _expanded_size(root: yaml.Node) -> int:
    """How many values ``root`` becomes once every alias is expanded (shared nodes counted each time they are
    used), computed on the composed graph without expanding it; stops at ``MAX_NODES``."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        if total > MAX_NODES:
            raise _TooBig(
                f"{node.tag.rsplit(':', 1)[-1]} of more than {MAX_NODES:,} values", node.start_mark.line + 1
            )
        sizes[id(node)] = total
    return sizes[id(root)]


def _load_all(text: str) -> list[Any]:
    """``yaml.load_all`` with our loader, each document's expanded size checked before it is constructed."""
    loader = _Loader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _expanded_size(node)
            doc = loader.construct_document(node)
            if doc is not None:
                docs.append(doc)
        return docs
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> Any:
    """Load one YAML document from ``path`` (a leading ``---`` is fine); SpecError with the line on any problem."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # never more than the limit into memory
    except FileNotFoundError:
        raise SpecError("file not found", file=path, hint="check the path of the sweeps file") from None
    except IsADirectoryError:
        raise SpecError("is a folder, not a sweeps file", file=path) from None
    except OSError as exc:
        raise SpecError(f"cannot read the file: {exc.strerror or exc}", file=path) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(
            f"the file is larger than {MAX_FILE_BYTES >> 20} MiB: not a sweeps file",
            file=path,
            hint="a sweeps file is a few KiB of YAML; check the path",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError("the file is not valid UTF-8 text", file=path, line=line) from None
    try:
        docs = _load_all(text)
    except _TooBig as exc:
        raise SpecError(
            f"the YAML expands to more than {MAX_NODES:,} values ({exc.why}): refused before expanding it",
            file=path,
            line=exc.line,
            hint="aliases (*name) that repeat large anchors multiply; write the values out, or use fewer",
        ) from None
    except RecursionError:
        raise SpecError(
            "the YAML is nested too deeply", file=path, hint="a sweeps file is a few levels deep"
        ) from None
    except _DuplicateKey as exc:
        raise SpecError(
            f"duplicate key {exc.key!r} (first defined on line {exc.first})",
            file=path,
            line=exc.line,
            key=str(exc.key),
            hint="YAML keeps only the last value of a repeated key; remove or rename one of them",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SpecError(
            f"YAML syntax error: {problem}",
            file=path,
            line=where,
            hint="fix the YAML syntax near this line (indentation, a missing ':' or an unclosed quote/bracket)",
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", file=path) from None
    if len(docs) > 1:
        raise SpecError(
            f"the file holds {len(docs)} YAML documents (separated by '---'); expected one",
            file=path,
            hint="put all sweeps of one file under a single 'sweeps:' list",
        )
    return docs[0] if docs else None
