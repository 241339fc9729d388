"""Configs: YAML files loaded into frozen, typed dataclasses, with CLI overrides.

An experiment declares its schema as a frozen dataclass (nested dataclasses for sections),
each field declared with `nd.config.field` (a default, a one-line `help`, and its allowed
values), and calls `cli`:

```python
@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = ndc.field("train", help="the module experiments.<experiment> that runs it")
    seed: int = ndc.field(0, help="the PRNG seed", ge=0)
    estimators: dict = ndc.field(default_factory=lambda: {"rbp": {"kind": "RBP"}},
                                 help="name -> estimator spec", spec="estimators", names=True)

cfg, args = nd.config.cli(Config, argv, description=__doc__)
# python -m experiments.train --config configs/x.yaml [--quick] [--out DIR] [--estimators.rbp.adjoint.kind Neumann]
```

Loading (`load`), in this order, each problem one `ConfigError` line naming the field:

1. The file is read as UTF-8 and parsed with `Loader`, a `yaml.SafeLoader` that refuses YAML
   aliases and anchors before anything is expanded (a 1 KB "billion laughs" file would
   otherwise expand to gigabytes), and reads `1e-3`, `1E5`, `.5` as numbers (YAML 1.2, where
   PyYAML's YAML 1.1 reads `1e-3` as a string). An empty file (or only comments) is an error.
   A schema's `experiment` field names the module that runs it (`experiments.<experiment>`,
   its default): a config naming another (in the file or by `--experiment`) is refused with
   the command that runs it (`own_experiment`), before its keys are checked.
2. A top-level `quick:` mapping holds overrides applied with `--quick` (deep-merged); it is
   checked against the schema even when unused.
3. Overrides `--a.b.c value` are applied to the plain data, before the dataclasses are
   built: a path follows the config's structure into sections, maps and lists
   (`--estimators.ep.beta 0.02`, `--steady.sweeps.0.values [1, 2]`), and must be a field of
   the schema or exist in the loaded config; inside a `{kind: ...}` spec a new constructor
   argument may be added (`--estimator.adjoint.kind Neumann`), checked against the
   constructor's signature like the file's. Values are YAML scalars read by `Loader` (a
   flow list `[1, 2]` or several values `--sizes 7 8` give a list; a bare boolean flag is
   `true`). An unknown path names the closest valid one.
4. The dataclasses are built: every key must be a field (an unknown key names the closest
   valid one), values are type-checked, and every constraint declared with `field` is
   checked (`ge`/`gt`/`le`/`lt` ranges, also on each entry of a list; `choices`;
   `nonempty`; `names`: mapping keys or strings that become folder names must be safe file
   names; `spec`: a `{kind: ...}` mapping resolved through the registry below, so a bad
   `kind` or argument fails before the run directory is created).

`cli` prints such an error as one line on stderr and exits with code 2; `entrypoint` does
the same for `ConfigError`s raised later inside `main`. `--help` prints the options and
every field of the config, with the loaded config's values when `--config` is given.

Registries: the only place where strings name code. A `kind:` names a class of one family
(networks, activations, estimators, relaxations, adjoint solves, RTRL sensitivities):

- a built-in by its short name, case-insensitive, `_`/`-` ignored (`RBP`, `hopfield`,
  `Neumann`, `AdjointODE`, `snap1`), or with its module prefix (`adjoint.Neumann`,
  `rtrl.SnAp1`, `relaxation.Anderson`);
- a user's class by import path, `kind: "my_package.nets:TauCTRNN"` (the module is
  imported, which runs its top-level code as `import` would: name only modules you trust;
  standard-library modules are refused outright);
- a class registered from Python with `register("networks", "tau_ctrnn", TauCTRNN)`.

The resolved object must be a class, subclass of the family's abstract base (for example
`nd.networks.AbstractNetwork`, `nd.AbstractEstimator`, `nd.adjoint.AbstractAdjointSolve`);
a module, a function, another class, or a private name (leading underscore anywhere in the
path) is refused with one line before anything is called. Why so strict: a config is data,
and may come from someone else; when `kind` could name any attribute (`runs.os.system`),
loading a config could run any command. Losses, optimisers and data sets are closed tables
of functions named by short name, extendable only from Python with `register`.

Networks (`build_network`): the `network:` section is `{kind: ..., **constructor arguments}`;
the experiment passes `n_in`, `n_out` (from the data) and `key`, so any network class of
the registry (or a user's) works in every experiment; a class built from layer `sizes`
receives `(n_in, *sizes, n_out)`. `--out` (`check_out`) must be non-empty and must not be,
or lie under, an existing file.
"""

import dataclasses
import difflib
import functools
import hashlib
import importlib
import inspect
import math
import os
import pathlib
import platform
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TYPE_CHECKING, TypeGuard

import yaml


if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ConfigError(ValueError):
    """A config that does not match its schema (one line, printed by `cli`/`entrypoint`)."""


# ---------------------------------------------------------------------------------------
# YAML: safe, alias-free, YAML 1.2 floats.
# ---------------------------------------------------------------------------------------

ALIAS_MESSAGE = "uses YAML aliases (&anchor / *alias), which are not supported: write the values out"


class _AliasRefused(yaml.YAMLError):
    pass


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses aliases and anchors when composing, before any node
    is expanded, and resolves YAML 1.2 floats (`1e-3`, `1E5`, `.5`, `-2.5e+3`)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(ALIAS_MESSAGE)
        return super().compose_node(parent, index)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "config"):
    """Parses YAML text with `Loader`; a syntax error or an alias is a one-line `ConfigError`."""
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (Loader is a SafeLoader)
    except _AliasRefused:
        raise ConfigError(f"{source} {ALIAS_MESSAGE}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(e).split())})") from None


def read_yaml(path) -> Any:
    """Reads a config file: UTF-8, valid YAML without aliases, not empty."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read: {e.strerror}") from None
    data = parse_yaml(text, f"config {path}")
    if data is None:
        raise ConfigError(f"config {path} is empty")
    return data


def _parse_value(text: str):
    if text.strip() in ("", "null", "~", "Null", "NULL"):
        return None if text.strip() else ""
    try:
        return parse_yaml(text, "override value")
    except ConfigError as e:
        if "aliases" in str(e):
            raise
        return text  # not YAML (e.g. "a: b: c"): the plain string


# ---------------------------------------------------------------------------------------
# Schema fields with constraints and help.
# ---------------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def field(
    default=dataclasses.MISSING,
    *,
    help: str,
    default_factory=dataclasses.MISSING,
    ge=None,
    gt=None,
    le=None,
    lt=None,
    choices: tuple | Callable[[], tuple] | None = None,
    nonempty: bool = False,
    names: bool = False,
    spec: str | None = None,
):
    """A schema field: `dataclasses.field` with a one-line `help` (shown by `--help`) and
    constraints that `load` checks, one error line naming the field, the value and the rule:

    - `ge`, `gt`, `le`, `lt`: a numeric range (on every entry of a list field);
    - `choices`: the allowed strings (a tuple, or a function returning one: a registry);
    - `nonempty`: a list or mapping with at least one entry;
    - `names`: the mapping's keys (or the list's strings, or the string) become folder or
      file names: 1 to 100 characters of `A-Z a-z 0-9 _ . + -`, not `.` or `..`;
    - `spec`: a `{kind: ..., **arguments}` mapping (or, with `names`, a mapping of names to
      such specs) of that registry family, resolved and checked against the constructor.
    """
    meta = dict(help=help, ge=ge, gt=gt, le=le, lt=lt, choices=choices, nonempty=nonempty, names=names, spec=spec)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def check_name(name, where: str, *, key: bool = False) -> str:
    """A string that becomes a file or folder name (a key of the mapping `where` when `key`):
    refuses separators, `.`/`..`, absolute paths, empty names and characters outside
    `A-Z a-z 0-9 _ . + -`, so that a config never writes outside the run directory."""
    label = f"'{where}' key {name!r}" if key else f"'{where}' = {name!r}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{label} cannot be a folder name (it must be a non-empty string)")
    if name in (".", "..") or not _SAFE_NAME.match(name) or len(name) > 100:
        raise ConfigError(
            f"{label} cannot be a folder name: use 1-100 of the characters A-Z a-z 0-9 _ . + - "
            "(no '/', '\\', '.' or '..')"
        )
    return name


def _check_number(meta, value, where):
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"'{where}' = nan is not a number")
    rules = [
        (">=", meta.get("ge"), value >= (meta.get("ge") or 0)),
        (">", meta.get("gt"), value > (meta.get("gt") or 0)),
        ("<=", meta.get("le"), value <= (meta.get("le") or 0)),
        ("<", meta.get("lt"), value < (meta.get("lt") or 0)),
    ]
    active = [(op, bound, ok) for op, bound, ok in rules if bound is not None]
    if not all(ok for _, _, ok in active):
        allowed = " and ".join(f"{op} {_fmt(bound)}" for op, bound, _ in active)
        raise ConfigError(f"'{where}' = {_fmt(value)} is out of range: must be {allowed}")


def _choices(choices) -> tuple[str, ...]:
    """A field's `choices`: a sequence, or a function returning one (a registry's names)."""
    values: Any = choices() if callable(choices) else choices
    return tuple(values)


def _check(meta: Mapping[str, Any], value: Any, where: str):
    if not meta or value is None:
        return
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _check_number(meta, v, f"{where}[{i}]")
    else:
        _check_number(meta, value, where)
    choices = meta.get("choices")
    if choices is not None and isinstance(value, str):
        options = _choices(choices)
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"'{where}' = {value!r} is not one of {', '.join(options)}{hint}")
    if meta.get("nonempty") and isinstance(value, (tuple, list, Mapping)) and not value:
        raise ConfigError(f"'{where}' is empty: give at least one entry")
    if meta.get("names"):
        if isinstance(value, Mapping):
            for k in value:
                check_name(k, where, key=True)
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                check_name(v, f"{where}[{i}]")
        else:
            check_name(value, where)
    family = meta.get("spec")
    if family is not None:
        # Both check their spec's type themselves (one line naming it when it is not a mapping).
        check: Callable[..., object] = check_network if family == "networks" else functools.partial(plan, family=family)
        if meta.get("names") and isinstance(value, Mapping):
            for k, v in value.items():
                check(v, where=f"{where}.{k}.")
        else:
            check(value, where=f"{where}.")


# ---------------------------------------------------------------------------------------
# Building the dataclasses.
# ---------------------------------------------------------------------------------------


def _field_types(schema) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _field_meta(schema) -> dict[str, Mapping]:
    return {f.name: f.metadata for f in dataclasses.fields(schema)}


def _is_dataclass_type(tp) -> "TypeGuard[type[DataclassInstance]]":
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _closest(name: str, options, cutoff=0.5):
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=cutoff)
    return close[0] if close else None


def _build(schema, data: Mapping, where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"'{where.rstrip('.') or 'config'}': expected a mapping, got {type(data).__name__} {data!r}")
    fields = _field_types(schema)
    metas = _field_meta(schema)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = _closest(key, fields)
            hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key '{where}{key}'{hint}")
        kwargs[key] = _convert(fields[key], value, f"{where}{key}")
        _check(metas[key], kwargs[key], f"{where}{key}")
    try:
        return schema(**kwargs)
    except TypeError as e:  # a field without a default, not given
        raise ConfigError(f"'{where.rstrip('.') or 'config'}': {e}") from None


def build(schema, data: Mapping):
    """`data` (plain values, as YAML gives them) built into `schema`, a frozen config
    dataclass, with every check `load` makes: an unknown key, a wrong type or a value out
    of range is a `ConfigError` naming the field. A field `data` lacks takes its default."""
    return _build(schema, data, "")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, where):
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        return _build(tp, {} if value is None else value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _convert(args[0], value, where)
        for a in args:  # first that accepts it
            try:
                return _convert(a, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"'{where}': {value!r} does not match {tp}")
    if origin in (tuple, list):
        (inner, *rest) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}': expected a list, got {value!r}")
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}': expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{where}': expected an integer, got {value!r}")
        return value
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"'{where}': expected true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"'{where}': expected a string, got {value!r}")
    return value


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ---------------------------------------------------------------------------------------
# Overrides on the plain data.
# ---------------------------------------------------------------------------------------


def _plain(value) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return _plain(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _plain(f.default_factory())
    return None


def _paths(schema, data, prefix="") -> list[str]:
    """Every path an override may name (for "did you mean"): the schema's fields, and the
    loaded data's entries inside maps and lists."""
    if isinstance(data, (list, tuple)):
        items: list[tuple[Any, Any]] = list(enumerate(data))
    elif isinstance(data, Mapping):
        items = list(data.items())
    else:
        items = []
    types_ = _field_types(schema) if _is_dataclass_type(schema) else {}
    items += [(k, None) for k in types_ if not (isinstance(data, Mapping) and k in data)]
    out = []
    for k, sub in items:
        out.append(f"{prefix}{k}")
        tp = types_.get(k)
        if _is_dataclass_type(tp) or isinstance(sub, (Mapping, list, tuple)):
            out += _paths(tp if _is_dataclass_type(tp) else None, sub, f"{prefix}{k}.")
    return out


def _set_path(data: dict, schema, path: str, value, flag: str, all_paths):
    def unknown():
        close = _closest(path, all_paths(), cutoff=0.6)
        hint = f"; did you mean '--{close}'?" if close else ""
        return ConfigError(f"unknown override '{flag}'{hint}")

    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise unknown()
    node: Any = data
    tp, creating = schema, False
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if _is_dataclass_type(tp):
            if not isinstance(node, dict):
                raise unknown()
            fields = {f.name: f for f in dataclasses.fields(tp)}
            name = part.replace("-", "_")
            if name not in fields:
                raise unknown()
            sub_tp = _field_types(tp)[name]
            if last:
                node[name] = value
                return
            if not isinstance(node.get(name), (Mapping, list)):
                node[name] = {} if _is_dataclass_type(sub_tp) else _field_default(fields[name])
            node, tp = node[name], (sub_tp if _is_dataclass_type(sub_tp) else None)
            if not isinstance(node, (dict, list)):
                raise unknown()
        elif isinstance(node, dict):
            key = part if part in node else None
            if key is None and ("kind" in node or creating):
                # A new constructor argument of a spec (or inside one just created): checked
                # against the constructor's signature when the config is built.
                key, creating = part, True
                if not last:
                    node[key] = {}
            if key is None:
                raise unknown()
            if last:
                node[key] = value
                return
            if not isinstance(node[key], (Mapping, list)):
                raise unknown()
            node = node[key]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise unknown()
            if last:
                node[int(part)] = value
                return
            if not isinstance(node[int(part)], (Mapping, list)):
                raise unknown()
            node = node[int(part)]
        else:
            raise unknown()


def _is_bool_field(schema, path):
    tp = schema
    for part in path.split("."):
        if not _is_dataclass_type(tp):
            return False
        tp = _field_types(tp).get(part.replace("-", "_"))
    return tp is bool


def split_overrides(tokens) -> list[tuple[str, int, Any]]:
    """`["--a.b", "1", "--c=x", "--l", "1", "2"]` -> `[(flag, number of values, value)]`,
    values parsed as YAML scalars (several values: a list; none: `None`)."""
    out, i, tokens = [], 0, list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}: overrides are --field.path value")
        i += 1
        if "=" in tok:
            flag, raw = tok.split("=", 1)
            values = [raw]
        else:
            flag, values = tok, []
            while i < len(tokens) and not tokens[i].startswith("--"):
                values.append(tokens[i])
                i += 1
        parsed = [_parse_value(v) for v in values]
        value = None if not parsed else parsed[0] if len(parsed) == 1 else parsed
        out.append((flag, len(parsed), value))
    return out


def apply_overrides(data: dict, schema, overrides) -> dict:
    """Applies `--a.b.c value` overrides to the plain config data (a deep copy is returned).
    See the module docstring for the rules; an unknown path names the closest valid one."""
    data = _plain(data)
    all_paths = functools.lru_cache(maxsize=1)(lambda: _paths(schema, data))
    for flag, n, value in split_overrides(overrides):
        path = flag[2:]
        if n == 0:
            if path[:3] in ("no_", "no-") and _is_bool_field(schema, path[3:]):
                path, value = path[3:], False
            elif _is_bool_field(schema, path):
                value = True
            else:
                raise ConfigError(f"override '{flag}' needs a value")
        _set_path(data, schema, path, value, flag, all_paths)
    return data


# ---------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------


def load(path, schema, *, quick: bool = False, overrides: list[str] | tuple[str, ...] = ()):
    """Loads `path` into `schema` (a frozen dataclass): reads the file (`read_yaml`), checks
    its `quick:` section, merges it with `quick`, applies `overrides` (`--a.b value`
    arguments) to the plain data, then builds and checks the dataclasses."""
    path = pathlib.Path(path)
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {path}: the top level must be a mapping, got {type(data).__name__}")
    data = dict(data)
    theirs = _other_experiment(schema, data)
    if theirs is not None:  # before its keys are checked: they would fail on the first one
        raise ConfigError(
            f"config {path} is for experiments.{theirs} (its 'experiment'), not experiments.{own_experiment(schema)}: "
            f"run python -m experiments.{theirs} --config {path}"
        )
    quick_section = data.pop("quick", None) or {}
    try:
        if not isinstance(quick_section, Mapping):
            raise ConfigError(f"'quick': expected a mapping, got {quick_section!r}")
        _check_quick(schema, quick_section, "quick.")
        if quick:
            data = _merge(data, quick_section)
        if overrides:
            data = apply_overrides(data, schema, overrides)
        theirs = _other_experiment(schema, data)
        if theirs is not None:
            raise ConfigError(
                f"'experiment' set to '{theirs}', but this command is experiments.{own_experiment(schema)} "
                f"('experiment' names the module that runs the config): run python -m experiments.{theirs} instead"
            )
        return _build(schema, data, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _other_experiment(schema, data: Mapping) -> str | None:
    """The `experiment` `data` names when it is not `schema`'s own, else None."""
    ours, theirs = own_experiment(schema), data.get("experiment")
    return theirs if ours is not None and isinstance(theirs, str) and theirs != ours else None


def own_experiment(schema) -> str | None:
    """The experiment a config schema belongs to: the default of its `experiment` field (the
    module `experiments.<experiment>` that runs it), or None when it declares none."""
    if not dataclasses.is_dataclass(schema):
        return None
    for f in dataclasses.fields(schema):
        if f.name == "experiment":
            return f.default if isinstance(f.default, str) else None
    return None


def _check_quick(schema, section: Mapping, where: str):
    """The quick section holds partial sections: only the keys are checked (the values are
    checked when merged)."""
    fields = _field_types(schema)
    for key, value in section.items():
        if key not in fields:
            close = _closest(key, fields)
            hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key '{where}{key}'{hint}")
        if _is_dataclass_type(fields[key]) and isinstance(value, Mapping):
            _check_quick(fields[key], value, f"{where}{key}.")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------


def _help_lines(schema, values, prefix="") -> list[str]:
    lines = []
    for f in dataclasses.fields(schema):
        tp = _field_types(schema)[f.name]
        value = values.get(f.name) if isinstance(values, Mapping) else None
        if _is_dataclass_type(tp):
            lines.append(f"  {prefix}{f.name}:  {f.metadata.get('help', '')}".rstrip())
            lines += _help_lines(tp, value if value is not None else {}, f"{prefix}{f.name}.")
            continue
        shown = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        rules = []
        meta = f.metadata
        for op, key in ((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt")):
            if meta.get(key) is not None:
                rules.append(f"{op} {_fmt(meta[key])}")
        if meta.get("choices") is not None:
            rules.append("one of " + ", ".join(_choices(meta["choices"])))
        rule = f" [{'; '.join(rules)}]" if rules else ""
        lines.append(f"  --{prefix}{f.name} = {shown}\n        {meta.get('help', '')}{rule}")
    return lines


def print_help(
    schema, *, prog: str, description: str | None, config: str | None, error: str | None = None, values=None
):
    """The `--help` text: usage, options, and every field of the config with its value (the
    loaded config's when `config` is given and loads) and its one-line description."""
    print(f"usage: {prog} --config FILE [--quick] [--out DIR] [--FIELD.PATH VALUE ...]\n")
    if description:
        print(description.strip() + "\n")
    print("options:")
    print("  -h, --help       show this help and the config's fields")
    print("  --config FILE    the YAML config")
    print("  --quick          the config's quick variant (CI, < 1 minute)")
    print("  --out DIR        run directory (default: runs/<config name>[-quick])")
    print("  --distributed    one process of a multi-process job (jax.distributed.initialize; without the")
    print("                   options below, from the cluster's environment, SLURM); any of them implies it:")
    print("  --coordinator-address HOST:PORT  --num-processes N  --process-id I  --heartbeat-timeout SECONDS")
    loaded = values is not None
    values = _plain(values if loaded else _default_instance(schema))
    source = "defaults"
    if config is not None:
        if error is None and loaded:
            source = f"values from {config}"
        else:
            source = f"defaults ({config} does not load: {error})"
    print(
        f"\nconfig fields ({source}); each is also an override, --FIELD.PATH VALUE, into maps and lists too"
        " (e.g. --estimators.ep.beta 0.02):"
    )
    print("\n".join(_help_lines(schema, values)))


def _default_instance(schema):
    try:
        return schema()
    except TypeError:
        return {}


def check_out(out: str) -> str:
    """`--out`: not empty, not an existing file, and no existing file on its path (a folder
    cannot be created under a file). Write permission is left to the run directory (root
    can write anywhere, so a read-only folder is not checked here)."""
    if out is None or not str(out).strip():
        raise ConfigError("--out is empty: give a run directory")
    p = pathlib.Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a directory")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, so the run directory cannot be created")
    return str(out)


_LAUNCH = {"--coordinator-address": str, "--num-processes": int, "--process-id": int, "--heartbeat-timeout": int}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _split_cli(argv):
    known = {"config": None, "out": None, "quick": False, "help": False, "distributed": False, "launch": {}}
    rest, i = [], 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        name, eq, val = tok.partition("=")
        if tok in ("-h", "--help"):
            known["help"] = True
        elif tok == "--quick":
            known["quick"] = True
        elif name == "--distributed":  # a flag; `--distributed true|false` is accepted too
            if eq:
                if val.lower() not in _BOOLS:
                    raise ConfigError(f"--distributed={val}: give true or false (or the flag alone)")
                known["distributed"] = _BOOLS[val.lower()]
            elif i + 1 < len(argv) and argv[i + 1].lower() in _BOOLS:
                i += 1
                known["distributed"] = _BOOLS[argv[i].lower()]
            else:
                known["distributed"] = True
        elif name in _LAUNCH:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value")
                i += 1
                val = argv[i]
            try:
                value = _LAUNCH[name](val)
            except ValueError:
                raise ConfigError(f"{name} {val!r}: must be an integer") from None
            if name == "--coordinator-address" and val.rpartition(":")[2] in ("", val):
                raise ConfigError(f"--coordinator-address {val!r}: give HOST:PORT (e.g. 127.0.0.1:12345)")
            if name != "--coordinator-address" and value < (
                1 if name in ("--num-processes", "--heartbeat-timeout") else 0
            ):
                raise ConfigError(f"{name} {val}: must be >= {1 if name != '--process-id' else 0}")
            known["launch"][name[2:].replace("-", "_")] = value
            known["distributed"] = True  # any launch option implies --distributed
        elif name in ("--config", "--out"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value")
                i += 1
                val = argv[i]
            known[name[2:]] = val
        else:
            rest.append(tok)
        i += 1
    return known, rest


def cli(
    schema, argv=None, *, description: str | None = None, default_config: str | None = None, prog: str | None = None
):
    """Parses `--config PATH [--quick] [--out DIR] [overrides...]` and returns `(cfg, args)`.

    **Arguments:**

    - `schema`: the experiment's frozen dataclass.
    - `argv`: the arguments (default `sys.argv[1:]`).
    - `description`: the `--help` text (the module's docstring).
    - `default_config`: the config used when `--config` is not given (else it is required).
    - `prog`: the command shown by `--help` (default `python -m <schema's module>`).

    **Returns:** `(cfg, args)`: the resolved config (the file, its `quick:` section with
    `--quick`, then the overrides), and `args` with `config`, `quick` and `out` (default
    `runs/<config name>[-quick]`; checked by `check_out`), `distributed` and `launch`.

    Multi-process: `--distributed [--coordinator-address HOST:PORT --num-processes N
    --process-id I --heartbeat-timeout S]` (any of the options implies `--distributed`) calls
    `nd.distributed.initialize` with them here, before the experiment touches JAX; without
    them `jax.distributed.initialize` reads the cluster's environment (SLURM).

    On a bad config prints one line naming the problem (key and file) to stderr and exits
    with code 2, without a traceback. `-h`/`--help` prints the help once and exits 0.

    A valid config turns on the persistent compilation cache (`enable_compilation_cache`):
    a second run of an experiment skips most of its compilation."""
    if argv is None:
        argv = sys.argv[1:]
    if prog is None:
        module = schema.__module__
        if module == "__main__":
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            module = spec.name if spec is not None else pathlib.Path(sys.argv[0]).name
        prog = f"python -m {module}"
    try:
        known, rest = _split_cli(argv)
    except ConfigError as e:
        _fail(e)
    config = known["config"] if known["config"] is not None else default_config
    if known["help"]:
        cfg, error = None, None
        if config is not None:
            try:
                cfg = load(config, schema, quick=known["quick"], overrides=rest)
            except ConfigError as e:
                error = str(e)
        print_help(schema, prog=prog, description=description, config=config, error=error, values=cfg)
        raise SystemExit(0)
    try:
        if config is None:
            raise ConfigError(f"--config is required (usage: {prog} --config FILE [--quick] [--out DIR]; --help)")
        cfg = load(config, schema, quick=known["quick"], overrides=rest)
        out = known["out"]
        if out is None:
            out = str(pathlib.Path("runs") / (pathlib.Path(config).stem + ("-quick" if known["quick"] else "")))
        check_out(out)
    except ConfigError as e:
        _fail(e)
    args = types.SimpleNamespace(
        config=config, quick=known["quick"], out=out, distributed=known["distributed"], launch=dict(known["launch"])
    )
    if known["distributed"]:
        # Before anything touches JAX (the experiment's own code runs after cli returns).
        from .distributed import initialize

        launch = dict(known["launch"])
        try:
            initialize(
                **{k: launch.pop(k, None) for k in ("coordinator_address", "num_processes", "process_id")},
                heartbeat_timeout=launch.pop("heartbeat_timeout", None),
            )
        except ConfigError as e:
            _fail(e)
    enable_compilation_cache()  # after `initialize`, which must come before anything else
    return cfg, args


# Off: NEURODYN_COMPILATION_CACHE set to one of these. Else a directory, or unset: the default.
_CACHE_OFF = ("0", "off", "false", "no", "none")


def _host_id() -> str:
    """The machine's architecture and CPU features, with the JAX versions: XLA:CPU's cached
    entries are native code for the CPU that compiled them, and a cluster's nodes may share
    a home directory while their CPUs differ."""
    import importlib.metadata

    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(line for line in f if line.startswith(("model name", "flags")))[:8192]
    except OSError:
        pass
    key = "|".join((platform.machine(), cpu, jax.__version__, importlib.metadata.version("jaxlib")))
    return f"{platform.machine()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache for this process: a program compiled by
    an earlier run (the same experiment, another seed, a resumed run) is read from disk
    instead of compiled again. `nd.config.cli`, so every experiment, calls it before
    anything compiles; call it first thing in a script of your own.

    The cache lives in `directory` (default `$NEURODYN_COMPILATION_CACHE`, else
    `$XDG_CACHE_HOME/neurodyn/xla` or `~/.cache/neurodyn/xla`), in a subdirectory per
    machine type (architecture, CPU features and JAX versions: XLA:CPU's entries are native
    code, and a cluster's nodes may share the home directory with different CPUs), created
    private to the user (mode 0700): JAX treats cached programs as trusted code, so a
    directory another user owns or can write to is not used. Programs that took 0.2 s or
    more to compile are stored (tens to hundreds of kB each; JAX's size limit needs the
    `filelock` package, not a dependency here); the directory can be deleted at any time.

    Left off (returns `None`) with `NEURODYN_COMPILATION_CACHE=off` (or 0, false, no, none),
    or where the directory cannot be created; left as it is where JAX's own cache is set
    (`JAX_COMPILATION_CACHE_DIR`, `jax.config`), whose directory it returns.
    """
    import jax

    setting = os.environ.get("NEURODYN_COMPILATION_CACHE", "")
    if directory is None and setting.strip().lower() in _CACHE_OFF:
        return None
    own = jax.config.values.get("jax_compilation_cache_dir") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if own:
        return str(own)
    if directory is None:
        directory = (
            setting
            or pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "neurodyn" / "xla"
        )
    path = pathlib.Path(directory).expanduser() / _host_id()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return None  # another user's, or writable by others: not trusted
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    # JAX decides once, at its first compilation, whether a cache is in use: a program
    # compiled before this call (an import's constant) would have decided "no" for good.
    compilation_cache.reset_cache()
    return str(path)


def _fail(e: BaseException):
    line = " ".join(str(e).split()) if str(e) else type(e).__name__
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(2) from None


def entrypoint(main):
    """Decorates an experiment's `main`: a `ConfigError` raised anywhere inside it (a bad
    `kind`, an unknown estimator argument, a missing data file) ends the process with one
    line on stderr and exit code 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ConfigError as e:
            _fail(e)

    return wrapped


# ---------------------------------------------------------------------------------------
# Registries: the only place where strings name code.
# ---------------------------------------------------------------------------------------


def _nd():
    import neurodyn

    return neurodyn


@dataclasses.dataclass(frozen=True)
class _Family:
    what: str  # "network", for messages
    base: Callable[[], type]  # the abstract base every class of the family subclasses
    modules: Callable[[], tuple]  # where the built-ins live
    prefixes: tuple[str, ...]  # accepted module prefixes of a dotted built-in name


def _families() -> dict[str, _Family]:
    nd = _nd()
    return {
        "networks": _Family("network", lambda: nd.networks.AbstractNetwork, lambda: (nd.networks,), ("networks",)),
        "activations": _Family(
            "activation", lambda: nd.activations.AbstractActivation, lambda: (nd.activations,), ("activations",)
        ),
        "estimators": _Family("estimator", lambda: nd.AbstractEstimator, lambda: (nd,), ("estimators",)),
        "relaxations": _Family(
            "relaxation", lambda: nd.relaxation.AbstractRelaxation, lambda: (nd.relaxation,), ("relaxation",)
        ),
        "adjoints": _Family(
            "adjoint solve", lambda: nd.adjoint.AbstractAdjointSolve, lambda: (nd.adjoint,), ("adjoint",)
        ),
        "sensitivities": _Family(
            "RTRL sensitivity", lambda: nd.rtrl.AbstractSensitivity, lambda: (nd.rtrl,), ("rtrl",)
        ),
    }


CLASS_FAMILIES = ("networks", "activations", "estimators", "relaxations", "adjoints", "sensitivities")
# The family of a nested spec, inferred from the constructor parameter that receives it;
# any other parameter accepts a class of any family (and nothing else).
PARAMETER_FAMILIES = {
    "adjoint": "adjoints",
    "relaxation": "relaxations",
    "sensitivity": "sensitivities",
    "activation": "activations",
    "final_activation": "activations",
    "estimator": "estimators",
    "network": "networks",
}
_REGISTERED: dict[str, dict[str, Any]] = {}


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


@functools.cache
def _builtins(family: str) -> dict[str, type]:
    fam = _families()[family]
    base = fam.base()
    table = {}
    for module in fam.modules():
        for attr, obj in vars(module).items():
            if attr.startswith(("_", "Abstract")) or not isinstance(obj, type):
                continue
            if issubclass(obj, base) and obj is not base:
                table[attr] = obj
    return table


def names(family: str) -> tuple[str, ...]:
    """The names a config may use for the built-ins and registered entries of `family`."""
    if family in CLASS_FAMILIES:
        return tuple(_builtins(family)) + tuple(_REGISTERED.get(family, {}))
    return tuple(_function_tables()[family]) + tuple(_REGISTERED.get(family, {}))


def register(family: str, name: str, obj) -> None:
    """Adds `obj` to a registry under `name`, from Python (never from a config):
    `register("networks", "tau_ctrnn", TauCTRNN)` lets configs say `kind: tau_ctrnn`. A class
    family's entry must subclass the family's abstract base; `losses`, `optimizers` and
    `datasets` take functions."""
    if family in CLASS_FAMILIES:
        base = _families()[family].base()
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"register({family!r}, {name!r}, ...): not a subclass of {base.__name__}")
    elif family not in _function_tables():
        raise ValueError(f"unknown registry {family!r}; known: {', '.join(CLASS_FAMILIES + tuple(_function_tables()))}")
    _REGISTERED.setdefault(family, {})[name] = obj


_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def resolve(kind, family: str | tuple[str, ...], where: str = "kind") -> type:
    """The class a `kind:` names, in `family` (or one of several families); see the module
    docstring for what is accepted. Nothing is called: a refused `kind` is a `ConfigError`
    naming `where`."""
    families = (family,) if isinstance(family, str) else tuple(family)
    fams = _families()
    what = " or ".join(fams[f].what for f in families) if len(families) < len(fams) else "component"
    if not isinstance(kind, str) or not kind.strip():
        raise ConfigError(f"'{where}' must name {_a(what)} class, got {kind!r}")
    if ":" in kind:
        obj = _import_class(kind, what, where)
        attr = kind.split(":")[1]
    else:
        name = kind
        prefixes = {p: f for f in families for p in fams[f].prefixes}
        head, _, tail = kind.partition(".")
        search = families
        if tail:
            if head not in prefixes or "." in tail:
                raise ConfigError(
                    f"unknown kind '{kind}' at '{where}': name a built-in {what} by its short name "
                    f"({', '.join(sum((list(names(f))[:4] for f in families), [])[:8])}, ...) "
                    "or a class by import path 'package.module:Class'"
                )
            name, search = tail, (prefixes[head],)
        table = {}
        for f in search:
            for n, c in _builtins(f).items():
                table.setdefault(_norm(n), (n, c))
            for n, c in _REGISTERED.get(f, {}).items():
                table.setdefault(_norm(n), (n, c))
        if _norm(name) not in table:
            close = _closest(_norm(name), list(table), cutoff=0.6)
            hint = f"; did you mean '{table[close][0]}'?" if close else ""
            known = ", ".join(v[0] for v in table.values())
            kinds = what if len(search) == len(families) else fams[search[0]].what
            raise ConfigError(
                f"unknown kind '{kind}' at '{where}'{hint} (known {kinds} kinds: {known}; or 'package.module:Class')"
            )
        attr, obj = table[_norm(name)]
    bases = tuple(fams[f].base() for f in families)
    if attr.startswith("_") or not isinstance(obj, type) or not issubclass(obj, bases):
        got = (
            "a module"
            if isinstance(obj, types.ModuleType)
            else "another class"
            if isinstance(obj, type)
            else f"a {type(obj).__name__}"
        )
        got = "a private name" if attr.startswith("_") else got
        raise ConfigError(
            f"kind '{kind}' at '{where}' is {got}, not {_a(what)} class (a subclass of "
            f"{' or '.join(b.__name__ for b in bases)})"
        )
    return obj


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _import_class(kind: str, what: str, where: str):
    if not _IMPORT_PATH.match(kind):
        raise ConfigError(f"kind '{kind}' at '{where}' is not an import path 'package.module:Class'")
    module_name, attr = kind.split(":")
    parts = module_name.split(".") + [attr]
    if any(p.startswith("_") for p in parts):
        raise ConfigError(f"kind '{kind}' at '{where}' names a private name (leading underscore)")
    if module_name.split(".")[0] in getattr(sys, "stdlib_module_names", ()):
        raise ConfigError(f"kind '{kind}' at '{where}' names a standard-library module, not {_a(what)} class")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 (the user's module: any failure is one line)
        raise ConfigError(
            f"kind '{kind}' at '{where}': cannot import {module_name} ({type(e).__name__}: {e})"
        ) from None
    if attr not in vars(module):
        close = _closest(attr, [k for k in vars(module) if not k.startswith("_")])
        hint = f"; did you mean '{module_name}:{close}'?" if close else ""
        raise ConfigError(f"kind '{kind}' at '{where}': {module_name} has no '{attr}'{hint}")
    return vars(module)[attr]


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked spec: the class and its arguments (nested specs are `Plan`s); nothing has
    been called yet. `construct()` builds it."""

    cls: type
    kwargs: dict
    where: str

    def construct(self, **extra):
        kwargs = {k: _construct(v) for k, v in self.kwargs.items()}
        try:
            return self.cls(**kwargs, **extra)
        except (TypeError, ValueError) as e:
            line = " ".join(str(e).split())
            raise ConfigError(
                f"cannot build '{self.where.rstrip('.') or self.cls.__name__}' ({self.cls.__name__}): {line}"
            ) from None


def _construct(v):
    if isinstance(v, Plan):
        return v.construct()
    if isinstance(v, (list, tuple)):
        return type(v)(_construct(x) for x in v)
    return v


def _signature_params(cls):
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None


def plan(
    spec, family: str | tuple[str, ...] = CLASS_FAMILIES, where: str = "", *, injected: tuple[str, ...] = ()
) -> Plan:
    """Checks a `{kind: ..., **arguments}` spec without calling anything: `kind` resolves
    in `family` (`resolve`), each argument is a parameter of the constructor (an unknown one
    names the closest), every required parameter is given (except `injected` ones, which
    the caller passes to `construct`), nested specs resolve in the family of their
    parameter (`PARAMETER_FAMILIES`, else any class family), and an activation given by
    name resolves through the activation registry."""
    label = where.rstrip(".") or "spec"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"'{label}': expected a mapping {{kind: ..., ...}}, got {type(spec).__name__} {spec!r}")
    spec = dict(spec)
    if "kind" not in spec:
        raise ConfigError(f"'{label}' needs a 'kind' (e.g. kind: RBP), got {spec}")
    cls = resolve(spec.pop("kind"), family, f"{where}kind")
    params = _signature_params(cls)
    if params is not None:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        valid = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        for key in spec:
            if not isinstance(key, str) or (not takes_any and key not in valid):
                close = _closest(key, valid)
                hint = (
                    f"; did you mean '{close}'?"
                    if close
                    else f"; {cls.__name__} takes {', '.join(valid) or 'no arguments'}"
                )
                raise ConfigError(f"unknown key '{where}{key}' for {cls.__name__}{hint}")
            if key in injected:
                raise ConfigError(f"'{where}{key}' is set by the experiment (from the data), not by the config")
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and n not in spec
            and n not in injected
        ]
        if missing:
            raise ConfigError(f"'{label}' ({cls.__name__}) needs '{missing[0]}'")
    kwargs = {}
    for k, v in spec.items():
        fam = PARAMETER_FAMILIES.get(k, CLASS_FAMILIES)
        if isinstance(v, Mapping) and "kind" in v:
            kwargs[k] = plan(v, fam, f"{where}{k}.")
        elif fam == "activations" and isinstance(v, str):
            kwargs[k] = Plan(resolve(v, "activations", f"{where}{k}"), {}, f"{where}{k}.")
        else:
            kwargs[k] = v
    return Plan(cls, kwargs, where)


def build_object(spec: Mapping, where: str = "", family: str | tuple[str, ...] = CLASS_FAMILIES, **extra):
    """Builds an object from `{kind: Name, **kwargs}` (`plan`, then `construct`): `kind` a
    class of `family` (default: any class family), `extra` keyword arguments the caller
    adds (a network's `n_in`, `n_out`, `key`). Errors are `ConfigError`s prefixed by `where`
    (e.g. `estimators.ep.`)."""
    return plan(spec, family, where, injected=tuple(extra)).construct(**extra)


def build_network(spec: Mapping, *, n_in: int, n_out: int, key, where: str = "network."):
    """A network from the config's `network:` mapping, `{kind: ..., **constructor arguments}`:
    the class receives `n_in`, `n_out` (from the data) and `key` as keyword arguments. A class
    built from layer `sizes` instead (`Layered`, `LayeredHopfield`, `RecurrentMLP`) receives
    `sizes = (n_in, *hidden, n_out)`, the config's `sizes` being the hidden layers. An
    activation may be given by name (`activation: relu`). Every integer argument (a size)
    must be >= 1."""
    spec = dict(spec)
    cls = resolve(spec.get("kind"), "networks", f"{where}kind")
    params = _signature_params(cls) or {}
    _check_sizes(spec, where)
    if "n_in" in params and "n_out" in params:
        extra = dict(n_in=n_in, n_out=n_out, key=key)
    elif "sizes" in params:
        hidden = spec.pop("sizes", ())
        if not isinstance(hidden, (list, tuple)):
            raise ConfigError(f"'{where}sizes': expected a list of hidden layer sizes, got {hidden!r}")
        extra = dict(sizes=(n_in, *hidden, n_out), key=key)
    else:
        raise ConfigError(f"'{where}kind': {cls.__name__} takes neither n_in/n_out nor sizes")
    return plan(spec, "networks", where, injected=tuple(extra)).construct(**extra)


def _check_sizes(spec: Mapping, where: str):
    for k, v in spec.items():
        if k == "kind":
            continue
        for i, x in enumerate(v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, int) and not isinstance(x, bool) and x < 1:
                at = f"{where}{k}[{i}]" if isinstance(v, (list, tuple)) else f"{where}{k}"
                raise ConfigError(f"'{at}' = {x} is out of range: must be >= 1 (a size)")


def check_network(spec: object, where: str = "network.") -> None:
    """`build_network`'s checks without building (at load time, before the run starts);
    anything but a mapping is refused with one line."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"'{where.rstrip('.')}': expected a mapping {{kind: ..., ...}}, got {spec!r}")
    spec = dict(spec)
    cls = resolve(spec.get("kind"), "networks", f"{where}kind")
    _check_sizes(spec, where)
    params = _signature_params(cls) or {}
    injected = ("n_in", "n_out", "key") if "n_in" in params else ("key",)
    if "sizes" in params and "n_in" not in params:
        spec.setdefault("sizes", ())
    plan(spec, "networks", where, injected=injected)


# Back-compatible lookups by name.


def activation(name: str):
    """An activation instance by name (`logistic`, `tanh`, `relu`, `leaky_relu`, `prelu`,
    `maxout`, ... any `nd.activations` class, case-insensitive), built with its defaults."""
    return resolve(name, "activations", "activation")()


def network_class(name: str):
    """A network class by name, case-insensitive (`ctrnn`, `hopfield`, `layered`, ...) or
    import path; see `resolve`."""
    return resolve(name, "networks", "network.kind")


ESTIMATORS = ("BPTT", "RBP", "EP", "RTRL")


def estimator_class(name: str):
    """An estimator class by name, case-insensitive (`bptt`, `rbp`, `ep`, `rtrl`)."""
    try:
        return resolve(name, "estimators", "estimator")
    except ConfigError:
        close = _closest(name.lower(), [n.lower() for n in names("estimators")], cutoff=0.5)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ConfigError(f"unknown estimator '{name}'{hint} (known: {', '.join(names('estimators'))})") from None


def _function_tables() -> dict[str, dict[str, Any]]:
    nd = _nd()
    return {
        "losses": {"squared_error": nd.losses.squared_error, "softmax_cross_entropy": nd.losses.softmax_cross_entropy},
        "optimizers": {"sgd": "sgd", "adam": "adam"},
        "datasets": {
            "digits": nd.data.digits,
            "double_moon": nd.data.double_moon,
            "mnist1d": nd.data.mnist1d,
            "mnist": nd.data.idx_images,
            "fashion_mnist": nd.data.idx_images,
        },
    }


def _lookup(family: str, name: str, what: str):
    table = dict(_function_tables()[family], **_REGISTERED.get(family, {}))
    if name not in table:
        close = _closest(name, list(table), cutoff=0.6)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ConfigError(f"unknown {what} '{name}'{hint} (known: {', '.join(table)})")
    return table[name]


def loss(name: str):
    """A loss function by name: `squared_error`, `softmax_cross_entropy` (or registered)."""
    return _lookup("losses", name, "loss")


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(
    learning_rate,
    schedule: str = "constant",
    *,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    final_fraction: float = 0.0,
):
    """The learning rate of optimiser step `k`, as optax takes it: `learning_rate` itself for
    a constant rate without warm-up (the optimiser then carries no step count), a schedule
    (a function of the step count) otherwise.

    - `schedule`: `constant`; `cosine`, from `learning_rate` to `final_fraction *
      learning_rate` along half a cosine (Loshchilov & Hutter, 2017, without restarts); or
      `linear`, the same ends joined by a straight line. Both decays end at `total_steps`
      (the run's optimiser steps, warm-up included) and stay at their end value after it.
    - `warmup_steps`: the first steps rise linearly from 0 to `learning_rate` (Goyal et al.,
      2017), then the schedule runs.

    `learning_rate` may be traced (a sweep axis); the step counts are Python integers. A
    bad argument is a `ConfigError` (a `ValueError`) naming it and the fix."""
    if schedule not in SCHEDULES:
        close = _closest(str(schedule), list(SCHEDULES), cutoff=0.6)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ConfigError(f"unknown learning-rate schedule {schedule!r}{hint} (known: {', '.join(SCHEDULES)})")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if schedule == "constant":
        if warmup_steps == 0:
            return learning_rate
        return _rate_schedule(learning_rate, schedule, 0, warmup_steps, 1.0)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(
            f"the {schedule!r} schedule decays over the run's optimiser steps: pass total_steps, an integer >= 1 "
            f"(epochs x batches per epoch), got {total_steps!r}"
        )
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"warmup_steps ({warmup_steps}) must be smaller than the run's {total_steps} optimiser steps "
            "(total_steps), or nothing is left to decay: lower warmup_steps or use the constant schedule"
        )
    if not 0.0 <= float(final_fraction) <= 1.0:
        raise ConfigError(f"final_fraction must lie in [0, 1] (the end rate over the peak), got {final_fraction!r}")
    return _rate_schedule(learning_rate, schedule, total_steps, warmup_steps, float(final_fraction))


def _rate_schedule(learning_rate, schedule: str, total: int, warmup: int, final: float):
    """`learning_rate_schedule`'s function of the step count, computed in the learning
    rate's own float type. (optax's schedules mix the count's type with theirs, which
    `jax_numpy_dtype_promotion="strict"` under 64-bit mode refuses; optax casts the value to
    each update's type, so ours carries no type of its own into the update.)"""
    import jax.numpy as jnp

    def rate(count):
        lr = jnp.asarray(learning_rate)
        dtype = lr.dtype if jnp.issubdtype(lr.dtype, jnp.floating) else jnp.result_type(float)
        k = jnp.asarray(count).astype(dtype)
        rise = jnp.minimum(k / warmup, 1.0) if warmup else 1.0
        if schedule == "constant":
            return lr * rise
        frac = jnp.clip((k - warmup) / (total - warmup), 0.0, 1.0)
        if schedule == "cosine":
            shape = final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        else:
            shape = 1.0 + (final - 1.0) * frac
        return lr * rise * shape

    return rate


def optimizer(
    name: str,
    learning_rate,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    clip_norm: float | None = None,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    final_fraction: float = 0.0,
):
    """An optax optimiser by name: `sgd` (with heavy-ball `momentum`, Haykin's (2009)
    `dw(n) = alpha dw(n-1) - eta g(n)`; `momentum: 0` is plain SGD) or `adam`; a registered
    one is called as `make(learning_rate)`, where `learning_rate` is a number or an optax
    schedule.

    - `clip_norm`: rescale each gradient whose global norm (over every parameter) exceeds
      it to that norm, before the optimiser sees it (Pascanu et al., 2013): the usual guard
      of BPTT through long sequences against exploding gradients.
    - `schedule`, `total_steps`, `warmup_steps`, `final_fraction`: the learning rate over
      the run (`learning_rate_schedule`); the default is the constant `learning_rate`.

    `learning_rate` may be a traced array (a sweep axis): build the optimiser inside the
    vmapped function. Weight decay is not an optimiser option: `nd.training.fit(l2=...)`
    adds it to the gradient, so it acts the same with every optimiser. A bad argument is a
    `ConfigError` (a `ValueError`); `optimizer_from` reads these options from a config."""
    import optax

    entry = _lookup("optimizers", name, "optimizer")
    rate = learning_rate_schedule(
        learning_rate, schedule, total_steps=total_steps, warmup_steps=warmup_steps, final_fraction=final_fraction
    )
    if entry == "sgd":
        opt = optax.sgd(rate, momentum=momentum or None, nesterov=nesterov)
    elif entry == "adam":
        opt = optax.adam(rate)
    else:
        opt = entry(rate)
    if clip_norm is None:
        return opt
    if isinstance(clip_norm, bool) or not float(clip_norm) > 0:
        raise ConfigError(f"clip_norm must be a number > 0 (the largest gradient norm let through), got {clip_norm!r}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt)


# The fields an experiment's config declares for `optimizer`'s clipping and schedule, one
# definition each, so that every experiment names, bounds and documents them alike; an
# experiment builds its optimiser from them with `optimizer_from`.


def clip_norm_field():
    """The config field `clip_norm` (`optimizer`'s gradient clipping; none by default)."""
    return field(None, help="rescale a gradient whose global norm exceeds this to this norm (none: no clipping)", gt=0)


def schedule_field():
    """The config field `schedule` (`learning_rate_schedule`; constant by default)."""
    return field("constant", help="the learning rate over the run's optimiser steps", choices=lambda: SCHEDULES)


def warmup_steps_field():
    """The config field `warmup_steps` (`learning_rate_schedule`'s linear warm-up; 0 by default)."""
    return field(0, help="optimiser steps rising linearly from 0 to the learning rate", ge=0)


def final_fraction_field():
    """The config field `final_fraction` (the decaying schedules' end over their peak; 0 by default)."""
    return field(0.0, help="cosine/linear: the last step's learning rate over the peak's", ge=0, le=1)


class OptimizerOptions(typing.Protocol):
    """A config (or a section of one) that declares the four fields above."""

    @property
    def clip_norm(self) -> float | None: ...
    @property
    def schedule(self) -> str: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def final_fraction(self) -> float: ...


def optimizer_from(
    options: OptimizerOptions,
    name: str,
    learning_rate,
    *,
    total_steps: int | None = None,
    momentum: float = 0.9,
    where: str = "",
):
    """`optimizer(name, learning_rate, ...)` with the clipping and schedule of a config's
    fields (declared with `clip_norm_field`, `schedule_field`, `warmup_steps_field` and
    `final_fraction_field`). `total_steps` is the run's optimiser steps, where a decaying
    schedule ends. A schedule that cannot run (a warm-up as long as the run) is a
    `ConfigError`, prefixed `where: ` when given (the config section holding the fields);
    call it before the run directory is made, so that a bad config leaves nothing."""
    try:
        return optimizer(
            name,
            learning_rate,
            momentum=momentum,
            clip_norm=options.clip_norm,
            schedule=options.schedule,
            total_steps=total_steps,
            warmup_steps=options.warmup_steps,
            final_fraction=options.final_fraction,
        )
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def dataset(name: str):
    """A classification data set's loader by name: `digits`, `double_moon`, `mnist1d`,
    `mnist`, `fashion_mnist` (the last two read local IDX files; see `nd.data`)."""
    return _lookup("datasets", name, "data set")
