"""Dataclass configs: field docstrings become `--help`, YAML round trip, `key=value` overrides.

Every component has one dataclass config; each field carries a one-line docstring written under it
(the attribute-docstring convention used by nerfstudio's configs). `field_docs` reads those
docstrings with `ast`, `add_dataclass_args` turns every scalar field into a `--dotted.name` option,
and `apply_overrides` applies `name=value` strings with a one-line error for unknown fields.
The resolved config is saved as YAML beside outputs and loaded back by `from_dict` (never `eval`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import functools
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from avatar.errors import AvatarError


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the string literal written directly under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover - classes built at run time
            continue
        body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_value(tp: Any, text: str, name: str) -> Any:
    """Parse a command-line string into a value of type `tp` (one-line error on failure)."""
    tp, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if get_origin(tp) is Literal:
            choices = get_args(tp)
            for c in choices:
                if str(c) == text:
                    return c
            raise ValueError(f"choose one of {', '.join(map(str, choices))}")
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(text)
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if tp in (int, float, str):
            return tp(text)
        if tp is Path:
            return Path(text)
        if get_origin(tp) in (tuple, list):
            import yaml

            val = yaml.safe_load(text if text.strip().startswith("[") else f"[{text}]")
            return tuple(val) if get_origin(tp) is tuple else list(val)
    except (ValueError, TypeError) as e:
        raise AvatarError(f"config field '{name}': cannot read '{text}' ({e})") from None
    raise AvatarError(f"config field '{name}' of type {tp} cannot be set from the command line")


def _iter_fields(cls: type, prefix: str = ""):
    hints = _resolved_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        full = prefix + f.name
        if dataclasses.is_dataclass(inner):
            yield from _iter_fields(inner, full + ".")
        else:
            yield full, tp, f, docs.get(f.name, "")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "", group_title: str | None = None) -> None:
    """Add one `--a.b.c` option per scalar field of `cls` (defaults left as SUPPRESS, so only the
    options a user gives override the preset)."""
    group = parser.add_argument_group(group_title or f"{cls.__name__} fields (override any preset value)")
    for full, tp, f, doc in _iter_fields(cls, prefix):
        inner, _ = _unwrap_optional(tp)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        helptext = f"{doc} (default: {default})".replace("%", "%%")
        kw: dict[str, Any] = dict(dest="cfg:" + full, default=argparse.SUPPRESS, help=helptext, metavar=_metavar(inner))
        if get_origin(inner) is Literal:
            kw["metavar"] = "{" + ",".join(map(str, get_args(inner))) + "}"
        group.add_argument("--" + full, type=str, **kw)


def _metavar(tp: Any) -> str:
    if tp is bool:
        return "BOOL"
    if tp in (int, float):
        return tp.__name__.upper()
    return "VALUE"


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Collect the `--a.b=value` options a user actually gave."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}


def apply_overrides(cfg: Any, overrides: dict[str, str] | list[str]) -> Any:
    """Return a copy of `cfg` with dotted `name=value` overrides applied.

    Unknown names raise a one-line `AvatarError` that lists close matches.
    """
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise AvatarError(f"override '{item}' must look like name=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v
        overrides = pairs
    known = {full: tp for full, tp, _, _ in _iter_fields(type(cfg))}
    cfg = _deepcopy_dc(cfg)
    for key, text in overrides.items():
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise AvatarError(f"config has no field '{key}'{hint}")
        value = text if not isinstance(text, str) else _parse_value(known[key], text, key)
        obj = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            obj = getattr(obj, p)
        setattr(obj, parts[-1], value)
    return cfg


def _deepcopy_dc(cfg: Any) -> Any:
    import copy

    return copy.deepcopy(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (Paths and Enums as strings, tuples as lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def from_dict(cls: type, data: dict[str, Any], strict: bool = True) -> Any:
    """Build `cls` from a dict (e.g. loaded YAML). Unknown keys raise unless `strict=False`."""
    hints = _resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown and strict:
        raise AvatarError(f"{cls.__name__}: unknown config field(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            v = from_dict(tp, v, strict)
        elif tp is Path and v is not None:
            v = Path(v)
        elif get_origin(tp) is tuple and v is not None:
            v = tuple(v)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum) and v is not None:
            v = tp(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml

    from avatar.core.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(cls: type, path: str | Path, strict: bool = True) -> Any:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise AvatarError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return from_dict(cls, data, strict)


# ---------------------------------------------------------------------------------------------
# flat configs -> plain `--field-name` options (avatar speak, avatar view)


def add_flat_dataclass_args(parser: argparse.ArgumentParser, cls: type, groups: dict[str, tuple[str, ...]] | None = None,
                            flags: dict[str, str | tuple[str, ...]] | None = None, metavars: dict[str, str] | None = None,
                            other_group: str = "other options") -> dict[str, Any]:
    """One option per field of a flat dataclass `cls`, its help line the field's docstring plus its default.

    The flag is `--field-name` (underscores as dashes) unless `flags` names others (a tuple gives aliases);
    a bool field defaulting to True becomes `--no-field-name` (store_false), one defaulting to False
    `--field-name` (store_true); a Literal field gets its choices. `groups` maps a help-section title to
    field names; fields it does not list go to `other_group`, so a new field always gets a flag. The
    parsed value lands in `args.<field name>` with the field's default; `dataclass_from_args` rebuilds the
    config. Returns the argument groups by title (callers add their own options to them)."""
    groups, flags, metavars = dict(groups or {}), dict(flags or {}), dict(metavars or {})
    hints = _resolved_hints(cls)
    docs = field_docs(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    listed = {n for names in groups.values() for n in names}
    unknown = listed - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    rest = tuple(f.name for f in fields if f.name not in listed)
    if rest:
        groups[other_group] = groups.get(other_group, ()) + rest
    made = {title: parser.add_argument_group(title) for title in groups}
    where = {n: made[title] for title, names in groups.items() for n in names}
    for f in fields:
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        doc = docs.get(f.name, "")
        dash = f.name.replace("_", "-")
        names = flags.get(f.name)
        kw: dict[str, Any] = dict(dest=f.name, default=default)
        if tp is bool:
            opts = names or (f"--no-{dash}" if default else f"--{dash}")
            kw.update(action="store_false" if default else "store_true", help=doc.replace("%", "%%"))
        else:
            opts = names or f"--{dash}"
            kw.update(help=(doc if default is None else f"{doc} (default {default})").replace("%", "%%"))
            if get_origin(tp) is Literal:
                kw.update(choices=get_args(tp), type=str)
            elif tp in (int, float, str):
                kw.update(type=tp, metavar=metavars.get(f.name, tp.__name__.upper() if tp is not str else None))
            else:
                raise ValueError(f"{cls.__name__}.{f.name}: type {tp} has no command-line form")
            if kw.get("metavar") is None:
                kw.pop("metavar", None)
        where[f.name].add_argument(*((opts,) if isinstance(opts, str) else opts), **kw)
    return made


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config of the options `add_flat_dataclass_args` added (fields absent from `args` keep defaults)."""
    vals = vars(args)
    return cls(**{f.name: vals[f.name] for f in dataclasses.fields(cls) if f.init and f.name in vals})
