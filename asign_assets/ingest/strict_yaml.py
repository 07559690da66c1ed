"""A bounded, literal YAML loader for files users write (manifests).

PyYAML's ``safe_load`` follows YAML 1.1: ``010`` becomes 8, ``on``/``yes`` become True,
``1:20`` becomes 80, a repeated key silently wins, and a 1 KB file of nested aliases
expands to gigabytes. This loader accepts only plain data: no anchors or aliases (so no
expansion at all), no duplicate keys, YAML-1.2-core scalars (``true``/``false``, decimal
integers and floats without leading zeros (``010`` stays the string "010"), ``null``/``~``), everything else a string.
Keys listed in ``string_keys`` keep their scalar exactly as written (ids and names).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, ScalarNode

MAX_DEPTH = 64

_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, anchors, duplicate keys or YAML 1.1 coercions."""

    string_keys: frozenset[str] = frozenset()
    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark)
        if isinstance(event, (ScalarEvent, CollectionStartEvent)) and event.anchor is not None:
            raise ComposerError(None, None, f"anchors (&{event.anchor}) are not allowed", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        out: dict = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(None, None, f"unhashable key {key!r}", key_node.start_mark) from None
            if key in out:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            if key in self.string_keys and isinstance(value_node, ScalarNode):
                out[key] = value_node.value
            else:
                out[key] = self.construct_object(value_node, deep=deep)
        return out


StrictLoader.yaml_implicit_resolvers = {}
for _tag, _regex, _first in (
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789.")),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
):
    StrictLoader.add_implicit_resolver(_tag, _regex, _first)


def _construct_int(loader: StrictLoader, node: ScalarNode) -> int:
    return int(loader.construct_scalar(node))


def _construct_float(loader: StrictLoader, node: ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
# Explicit tags that PyYAML would otherwise honour: bytes and timestamps are not data we take.
StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_str)
StrictLoader.add_constructor("tag:yaml.org,2002:binary", StrictLoader.construct_yaml_str)
for _tag in ("set", "omap", "pairs"):
    StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", StrictLoader.construct_undefined)


def load(text: str, string_keys: frozenset[str] = frozenset()) -> Any:
    """Parse ``text``; raises ``yaml.YAMLError`` on anything outside plain, literal data."""
    loader_cls = type("BoundStrictLoader", (StrictLoader,), {"string_keys": frozenset(string_keys)})
    loader = loader_cls(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
