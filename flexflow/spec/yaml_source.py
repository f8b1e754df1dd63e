"""Reading YAML safely, keeping where every key and value stands in the file.

PyYAML composes the document into nodes (with the C parser when available); flexflow then builds
plain data from the nodes itself, so that:

- only the standard tags are accepted (no Python objects, no custom tags);
- alias expansion is bounded: a "billion laughs" document fails fast instead of eating memory;
- every path of keys and indexes maps to its line and column, for errors that point at the file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_BYTES = 1_000_000
#: Nodes built at most, aliases expanded; a real spec has a few hundred.
MAX_NODES = 100_000
#: Deepest nesting of mappings and lists; a spec needs about six levels.
MAX_DEPTH = 64

#: Keys and indexes from the document's root to a value: ``("images", 0, "flux", "seed")``.
KeyPath = tuple[str | int, ...]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_constructor = yaml.SafeLoader("")  # a constructor for scalars of the standard tags only


class YamlProblem(Exception):
    """The text is not YAML that flexflow reads; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass
class Positions:
    """Where each path stands: 1-based (line, column) of its key (mappings) or item (sequences)."""

    spots: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def of(self, path: KeyPath) -> tuple[int, int]:
        """The position of a path, or of its nearest ancestor that exists in the file."""
        while path not in self.spots and path:
            path = path[:-1]
        return self.spots.get(path) or self.spots.get(("<value>",), (1, 1))

    def value_of(self, path: KeyPath) -> tuple[int, int]:
        return self.spots.get((*path, "<value>"), self.of(path))


def load(text: str) -> tuple[Any, Positions]:
    """Plain data (dicts, lists, str, int, float, bool, None; dates as ISO strings) and positions."""
    if len(text.encode()) > MAX_BYTES:
        raise YamlProblem(f"the file is larger than {MAX_BYTES:,} bytes; a spec is a few kilobytes")
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_yaml_message(exc), *_error_spot(exc, text)) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}") from None
    positions = Positions()
    if node is None:
        return None, positions
    builder = _Builder(positions)
    return builder.build(node, ()), positions


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    message = f"not valid YAML: {exc.problem or exc.context}"
    problem = exc.problem or ""
    if "alias" in problem or "alphabetic or numeric" in problem:
        message += ' (a value starting with * or & must be quoted, e.g. schedule: "0 6 * * MON")'
    return message


def _error_spot(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int]:
    """Where a YAML error is; at the end of the text, where the unclosed construct began, else its last line."""
    lines = text.splitlines() or [""]
    for mark in (exc.problem_mark, exc.context_mark):
        if mark is not None and mark.line < len(lines):
            return mark.line + 1, min(mark.column, len(lines[mark.line])) + 1
    return len(lines), len(lines[-1]) + 1


def _key_text(node: yaml.Node) -> object:
    """A key node's text; a complex key (a list or mapping) stands for itself, and is rejected later."""
    return node.value if isinstance(node, yaml.ScalarNode) else id(node)


def _spot(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, positions: Positions) -> None:
        self.positions = positions
        self.nodes = 0
        self.open: set[int] = set()  # ids of the collections being built: an alias to one is a cycle

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlProblem(
                f"the document expands to more than {MAX_NODES:,} values (aliases nested too deep?)", *_spot(node)
            )
        self.positions.spots.setdefault((*path, "<value>"), _spot(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):  # compose makes no other kind
            raise YamlProblem(f"unexpected YAML node {type(node).__name__}", *_spot(node))
        if id(node) in self.open:
            raise YamlProblem("an alias refers to a mapping or list that contains it (a cycle)", *_spot(node))
        if len(path) >= MAX_DEPTH:
            raise YamlProblem(f"values are nested more than {MAX_DEPTH} levels deep", *_spot(node))
        self.open.add(id(node))
        try:
            return self._mapping(node, path) if isinstance(node, yaml.MappingNode) else self._sequence(node, path)
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        if node.tag != _TAG + "map":
            raise YamlProblem(f"tag {node.tag} is not allowed; specs use plain YAML", *_spot(node))
        result: dict[str, Any] = {}
        for key_node, value_node in self._pairs(node):
            key = self._scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int | bool) or key is None:
                raise YamlProblem("mapping keys must be plain words", *_spot(key_node))
            key = str(key)
            if key in result:
                raise YamlProblem(f"key '{key}' appears twice in the same mapping", *_spot(key_node))
            self.positions.spots[(*path, key)] = _spot(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _pairs(self, node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
        """Key/value nodes, with YAML merge keys (``<<: *defaults``) expanded, own keys last."""
        own = [(k, v) for k, v in node.value if k.tag != _TAG + "merge"]
        taken = {_key_text(k) for k, _ in own}
        for key_node, value_node in node.value:
            if key_node.tag != _TAG + "merge":
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:  # the first mapping that has a key wins, as YAML says
                if not isinstance(source, yaml.MappingNode):
                    raise YamlProblem("a merge key (<<) takes a mapping", *_spot(source))
                self.nodes += len(source.value)
                for pair in source.value:
                    if _key_text(pair[0]) not in taken:
                        taken.add(_key_text(pair[0]))
                        yield pair
        yield from own

    def _sequence(self, node: yaml.SequenceNode, path: KeyPath) -> list[Any]:
        if node.tag != _TAG + "seq":
            raise YamlProblem(f"tag {node.tag} is not allowed; specs use plain YAML", *_spot(node))
        items = []
        for index, item in enumerate(node.value):
            self.positions.spots[(*path, index)] = _spot(item)
            items.append(self.build(item, (*path, index)))
        return items

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise YamlProblem(f"tag {node.tag} is not allowed; specs use plain YAML", *_spot(node))
        if node.tag == _STR:
            return node.value
        try:
            # The tag's own constructor: construct_object would cache every node for good.
            value = _constructor.yaml_constructors[node.tag](_constructor, node)
        except (yaml.YAMLError, ValueError, OverflowError):
            # Date-shaped but no date (2026-13-01): keep the text, and let the checks say what is wrong.
            return node.value
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        return value
