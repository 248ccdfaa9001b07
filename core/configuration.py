"""YAML configuration validated into typed objects.

Every job's configuration is a `Section` subclass (a strict pydantic model): unknown keys
and wrong types are errors that name the key path, for example
``kafka.bootstrap_servers: expected a string, got 9092``.

Environment variables reach a configuration in two documented ways:

* ``${NAME}`` or ``${NAME:-default}`` inside any string value is replaced by the variable
  (for secrets such as SASL passwords);
* ``RIVERBEAM__SECTION__KEY=value`` overrides any key path (``RIVERBEAM__KAFKA__BOOTSTRAP_SERVERS``
  for hosts); the value is read as a YAML scalar, so ``10`` is an integer.

>>> class Job(Section):
...     kafka: dict[str, str] = {}
>>> parse_config({"kafka": {"bootstrap_servers": 9092}}, Job, environ={})
Traceback (most recent call last):
...
core.errors.ConfigError: kafka.bootstrap_servers: expected a string, got 9092
>>> parse_config({}, Job, environ={"RIVERBEAM__KAFKA__BOOTSTRAP_SERVERS": "k:1"}).kafka
{'bootstrap_servers': 'k:1'}
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import pydantic
import yaml

from core.errors import ConfigError, ConfigErrorCollector, config_error

ENV_OVERRIDE_PREFIX = "RIVERBEAM__"
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

SectionT = TypeVar("SectionT", bound="Section")


class Section(pydantic.BaseModel):
    """Base of every configuration object: strict types, no unknown keys, immutable."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def format_key_path(loc: tuple) -> str:
    """Join a pydantic location into a key path.

    >>> format_key_path(("model", "pipeline", 1, "lr"))
    'model.pipeline[1].lr'
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    expected = _EXPECTED.get(kind)
    if kind in ("extra_forbidden", "missing"):
        return expected
    if expected is None:
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        return message
    return f"{expected}, got {error['input']!r}" if isinstance(error["input"], str) else f"{expected}, got {error['input']}"


MAX_CONFIG_NODES = 100_000  # values in a document once YAML aliases are expanded: bounds an alias bomb
MAX_CONFIG_DEPTH = 100  # nesting of a document: bounds a self-referencing alias and a 20,000-deep list


def _short(path: str, limit: int = 60) -> str:
    return path if len(path) <= limit else f"{path[:limit]}…"


def _interpolate(value: Any, environ: Mapping[str, str], path: str, budget: list[int] | None = None, depth: int = 0) -> Any:
    """`value` with ``${VAR}`` / ``${VAR:-default}`` replaced, as a tree (aliases expanded).

    YAML aliases share one object; expanding them copies it once per reference, so nested aliases
    grow exponentially: past `MAX_CONFIG_NODES` values the document is refused.

    >>> import yaml
    >>> lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    >>> lines += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip("abcdef", "bcdefg")]
    >>> bomb = chr(10).join(lines)
    >>> _interpolate(yaml.safe_load(bomb), {}, "")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: e[7][8][8][8][9]: the document expands to more than 100000 values (nested YAML aliases?)

    A self-referencing alias would nest for ever: past `MAX_CONFIG_DEPTH` levels it is refused.

    >>> _interpolate(yaml.safe_load("model: &m {pipeline: *m}"), {}, "")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: model.pipeline.pipeline.pipeline.pipeline.pipeline.pipeline.…: the document nests more than 100 levels deep (a self-referencing YAML alias?)
    """
    if budget is None:
        budget = [MAX_CONFIG_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(path, f"the document expands to more than {MAX_CONFIG_NODES} values (nested YAML aliases?)")
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(_short(path), f"the document nests more than {MAX_CONFIG_DEPTH} levels deep (a self-referencing YAML alias?)")
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _INTERPOLATION.sub(replace, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, environ, f"{path}.{k}" if path else str(k), budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, environ, f"{path}[{i}]", budget, depth + 1) for i, v in enumerate(value)]
    return value


def _apply_overrides(data: dict, environ: Mapping[str, str]) -> dict:
    for name, raw in environ.items():
        if not name.startswith(ENV_OVERRIDE_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_OVERRIDE_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(keys), f"{name} overrides a key inside a non-mapping")
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return data


def _override_source(loc: tuple, environ: Mapping[str, str]) -> str | None:
    """The environment variable whose override put the value at `loc` there, as a source: a typo in
    ``RIVERBEAM__KAFKA__BOOTSTRAP_SERVER`` is the variable's mistake, not the YAML file's.

    >>> _override_source(("kafka", "bootstrap_server"), {"RIVERBEAM__KAFKA__BOOTSTRAP_SERVER": "k:1"})
    'environment variable RIVERBEAM__KAFKA__BOOTSTRAP_SERVER'
    >>> _override_source(("kafka", "topic"), {"RIVERBEAM__KAFKA__BOOTSTRAP_SERVER": "k:1"}) is None
    True
    """
    path = tuple(str(part).lower() for part in loc)
    for name in environ:
        if name.startswith(ENV_OVERRIDE_PREFIX):
            keys = tuple(k.lower() for k in name[len(ENV_OVERRIDE_PREFIX) :].split("__") if k)
            if keys and path[: len(keys)] == keys:
                return f"environment variable {name}"
    return None


def parse_config(
    data: Any,
    cls: type[SectionT],
    *,
    source: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> SectionT:
    """Validate plain data (as loaded from YAML) into `cls`, applying environment overrides.

    Raises `ConfigError` naming the wrong key path; with several mistakes, a `ConfigErrors`
    naming every one of them (one line each).
    """
    environ = os.environ if environ is None else environ
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}", source=source)
    try:
        data = _apply_overrides(_interpolate(data, environ, ""), environ)
    except ConfigError as error:
        raise ConfigError(error.path, error.message, source=source) from None
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as error:
        errors = [ConfigError(format_key_path(e["loc"]), _describe(e), source=_override_source(e["loc"], environ) or source) for e in error.errors()]
        raise config_error(errors) from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file (a local path, or ``gs://`` / ``s3://`` through `core.storage`), turning a
    missing file or a syntax error into a `ConfigError`."""
    from core import storage

    source = str(path)
    try:
        if storage.is_local(source):
            text = Path(storage.parse_uri(source).path).read_text()
        else:
            text = storage.read_bytes(source).decode("utf-8")
    except OSError as error:
        raise ConfigError("", f"cannot read: {error.strerror}", source=source) from None
    except (storage.StorageError, UnicodeDecodeError) as error:
        raise ConfigError("", f"cannot read: {error}", source=source) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(where, f"invalid YAML: {getattr(error, 'problem', error)}", source=source) from None
    except RecursionError:  # the YAML reader recurses once per level
        raise ConfigError("", f"the document nests too deep to read (keep it under {MAX_CONFIG_DEPTH} levels)", source=source) from None
    duplicates = duplicate_keys(root)
    if duplicates:
        raise config_error([e.at(source=source) for e in duplicates])
    return data


def duplicate_keys(root: yaml.Node | None) -> list[ConfigError]:
    """A `ConfigError` for each key given twice in one mapping (YAML would silently keep the last).

    >>> [str(e) for e in duplicate_keys(yaml.compose("kafka:\\n  topic: a\\n  topic: b\\nmodel: {x: 1, x: 2}\\n"))]
    ['kafka.topic: given twice (lines 2 and 3); YAML would keep only the last: remove one', 'model.x: given twice (lines 4 and 4); YAML would keep only the last: remove one']
    """
    errors, seen, stack = [], set(), [(root, "")]
    while stack:  # iterative, each node once: an alias (even a self-referencing one) is walked once
        node, path = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                    stack.append((value, path))
                    continue
                where = f"{path}.{key.value}" if path else key.value
                if key.value in first:
                    errors.append(ConfigError(where, f"given twice (lines {first[key.value]} and {key.start_mark.line + 1}); YAML would keep only the last: remove one"))
                first.setdefault(key.value, key.start_mark.line + 1)
                stack.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return sorted(errors, key=lambda e: e.path)


def load_config(path: str | os.PathLike, cls: type[SectionT], environ: Mapping[str, str] | None = None) -> SectionT:
    """Read and validate one job's YAML file: the types, then the checks beyond types.

    A `Section` may define ``check_semantics()`` (River names, values that depend on each
    other); it runs when the types are right. Errors read ``FILE: key.path: what is wrong``, every
    mistake of the file at once, one line each.
    """
    source = str(path)
    data = read_yaml(path)
    collect = ConfigErrorCollector(source=source)
    config = None
    with collect.check():
        config = parse_config(data, cls, source=source, environ=environ)
    if config is None:  # type errors: still check the sections whose own types are right
        if isinstance(data, dict):
            _check_sections(data, cls, collect, environ)
    elif hasattr(config, "check_semantics"):
        with collect.check():
            config.check_semantics()
    collect.raise_if_any()
    return config


def _check_sections(data: dict, cls: type[Section], collect: ConfigErrorCollector, environ) -> None:
    """Run ``check_semantics`` of every well-typed top-level section (or list item) of `data`."""
    for name, field in cls.model_fields.items():
        value = data.get(name)
        if value is None:
            continue
        annotation = field.annotation
        for kind in typing.get_args(annotation) or (annotation,):
            items = None
            if typing.get_origin(kind) is list and isinstance(value, list):
                kind, items = typing.get_args(kind)[0], list(enumerate(value))
            elif isinstance(value, dict):
                items = [(None, value)]
            if not (isinstance(kind, type) and issubclass(kind, Section) and hasattr(kind, "check_semantics")) or items is None:
                continue
            for index, item in items:
                where = name if index is None else f"{name}[{index}]"
                try:
                    section = parse_config(item, kind, environ={})
                except ConfigError:
                    continue  # its type errors are reported already
                with collect.check(prefix=where):
                    section.check_semantics()
