"""YAML and JSON text to Python values, strictly: the one parser every config, recipe, record and override uses.

`load_yaml(text, what)` and `load_json(text, what)` return the value, or raise UserError as one line starting with
`what` (e.g. "recipe runs/a.yaml"). Beyond what yaml.safe_load / json.loads refuse, they refuse:

- a key written twice in one mapping (YAML names the key and both lines; JSON names the key): the parsers would
  keep the last silently, e.g. a second `dmd:` block whose learning rate nobody meant;
- nesting deeper than MAX_DEPTH levels (a file nested 20k deep, which would end in RecursionError);
- a YAML document whose aliases expand to more than MAX_NODES values or refer to themselves (the "billion laughs"
  alias bomb: the parser shares the repeated nodes, but any code walking the value would expand them).

and read numbers as a person means them: YAML 1.1 (PyYAML) takes `1e0` and `2e-4` for strings because they lack a
dot and a signed exponent; here they are floats, as in YAML 1.2 and JSON. Number pairs such as `7:3` stay strings
(YAML 1.1 would read the base-60 integer 423), since they are ratios wherever a config holds them.
"""

from __future__ import annotations

import json
import re

import yaml

from flashdistill.errors import UserError

MAX_DEPTH = 100  # levels of nesting; configs and records use fewer than 10
MAX_NODES = 100_000  # values after alias expansion; the largest shipped recipe has a few hundred
_MERGE = "tag:yaml.org,2002:merge"
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")  # 1e0 2e-4 1.5E3 .5e1
_RATIO = re.compile(r"^\d+(?:\.\d*)?:\d+(?:\.\d*)?$")


class _Refused(yaml.MarkedYAMLError):
    """Well-formed YAML this project does not accept (duplicate key, too deep, alias bomb); not 'invalid YAML'."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with duplicate keys, deep nesting and alias bombs refused, and numbers read as YAML 1.2 does."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:  # checked while composing, so a 20k-deep file stops at level MAX_DEPTH + 1, in bounded time
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        # Checked on the composed nodes, before any `<<` merge rewrites them, so a merged key overridden on purpose
        # is not a duplicate. Scalar keys compare by resolved tag and text (`1` and `"1"` are different keys).
        seen: dict[tuple[str, str], yaml.Mark] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            ident, here = (key.tag, key.value), key.start_mark
            if ident in seen:
                first = seen[ident]
                where = (f"line {first.line + 1} and line {here.line + 1}" if first.line != here.line else
                         f"line {here.line + 1}, columns {first.column + 1} and {here.column + 1}")
                raise _Refused(problem=f"duplicate key '{key.value}' ({where}); keep one", problem_mark=here)
            seen[ident] = here
        return node

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+.0123456789":
    StrictLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, ("tag:yaml.org,2002:float", _FLOAT))
for _first in "0123456789":
    StrictLoader.yaml_implicit_resolvers[_first].insert(0, ("tag:yaml.org,2002:str", _RATIO))


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root) -> None:
    """Refuse a node graph whose alias expansion is larger than MAX_NODES, deeper than MAX_DEPTH, or cyclic.

    Sizes are counted once per distinct node (memoised, iterative), so a bomb is measured in the time it takes to
    read it, never expanded."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    entered: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise _Refused(problem=f"its aliases (*name) expand to more than {MAX_NODES} values; write the "
                               f"values out or use fewer aliases", problem_mark=node.start_mark)
            if depth[key] > MAX_DEPTH:
                raise _Refused(problem=f"its aliases (*name) nest more than {MAX_DEPTH} levels deep",
                               problem_mark=node.start_mark)
            continue
        if key in size:
            continue
        if key in entered:  # reached again before it was finished: the node contains itself
            raise _Refused(problem="an alias (*name) refers to a value that contains it", problem_mark=node.start_mark)
        entered.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _position(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def yaml_problem(err: yaml.YAMLError) -> str:
    """A PyYAML error as one phrase with its position: `found character '\\t' ... (line 2, column 1)`."""
    return " ".join(str(getattr(err, "problem", None) or err).split()) + _position(err)


def load_yaml(text: str, what: str):
    """The value of the YAML document `text` (None when empty); UserError starting with `what` when refused."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as err:
        problem = err.problem if err.problem.startswith("duplicate") else f"{err.problem}{_position(err)}"
        raise UserError(f"{what}: {problem}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{what}: not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:  # a nesting the composer's count did not see (defence in depth)
        raise UserError(f"{what}: nested too deeply") from None


def _pairs_without_duplicates(what: str):
    def hook(pairs: list) -> dict:
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise UserError(f"{what}: duplicate key '{key}' in a JSON object; keep one")
            obj[key] = value
        return obj
    return hook


def _json_depth(value) -> int:
    """Levels of nesting of a parsed JSON value (iterative: the value may be as deep as json.loads allowed)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def lone_surrogate(value) -> str | None:
    """Where the first string of a parsed value (keys included) holds a lone UTF-16 surrogate, as a phrase
    (`'prompt' holds '\\ud800' at character 1`), else None. JSON's `\\ud800` escape and YAML's are valid syntax, but
    the string is not text: encoding it (a cache key, a tokenizer) raises UnicodeEncodeError."""
    stack = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                return f"{path or 'the value'} holds {item[err.start]!r} at character {err.start + 1}"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, f"the key {key!r}"))
                stack.append((child, f"{path}.{key}" if path else repr(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def load_json(text: str, what: str):
    """The value of the JSON text; UserError starting with `what` when invalid, with a duplicate key, or nested
    more than MAX_DEPTH levels."""
    try:
        value = json.loads(text, object_pairs_hook=_pairs_without_duplicates(what))
    except json.JSONDecodeError as err:
        raise UserError(f"{what}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise UserError(f"{what}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as err:  # beyond syntax, e.g. an integer of more than 4300 digits
        raise UserError(f"{what}: not readable JSON ({' '.join(str(err).split())[:120]})") from None
    if _json_depth(value) > MAX_DEPTH:
        raise UserError(f"{what}: nested more than {MAX_DEPTH} levels deep")
    return value
