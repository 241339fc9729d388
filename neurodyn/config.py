"""Configs: YAML files loaded into frozen, typed dataclasses, with CLI overrides.

An experiment declares its schema as a frozen dataclass (nested dataclasses for sections)
and calls `cli`:

```python
@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = "train"
    seed: int = 0
    estimator: EstimatorConfig = EstimatorConfig()

cfg, args = nd.config.cli(Config, argv, description=__doc__)
# python -m experiments.train --config configs/x.yaml [--quick] [--out DIR] [--estimator.beta 0.05]
```

- `yaml.safe_load`; every key must be a field: an unknown key is a `ConfigError` naming the
  key, the file and the closest valid key; `cli` prints that one line and exits with code 2.
- A top-level `quick:` mapping holds overrides applied with `--quick` (deep-merged).
- Overrides after the known flags go through tyro (`--section.field value`).
- Strings name classes only here, through the registries: `network_class`, `estimator_class`,
  `activation`, `optimizer`, `dataset`, and `build_object({kind: Name, ...})` for any neurodyn
  object (`EP`, `adjoint.Neumann`, `rtrl.SnAp1`).
- Errors found later (a bad `kind`, a misspelt estimator argument) are `ConfigError`s too;
  wrap `main` in `entrypoint` so that they also end as one line and exit code 2.

How an experiment module is written (`experiments/train.py` is the full example):

```python
@dataclasses.dataclass(frozen=True)
class Config:                       # the schema: every YAML key is a field
    experiment: str = "my_exp"      # run_all_quick runs `experiments.<experiment>`
    estimator: dict = dataclasses.field(default_factory=lambda: {"kind": "RBP"})
    steps: int = 100

@nd.config.entrypoint
def main(argv=None):
    cfg, args = nd.config.cli(Config, argv, description=__doc__)
    run = nd.runs.RunDir(args.out, cfg)            # config.yaml with provenance
    est = nd.config.build_object(cfg.estimator)
    ...                                            # run.log(row), run.save_checkpoint(...)
    run.write_summary(rows); save figures under run.figures

if __name__ == "__main__":
    main()
```

The config file's first lines are comments: the command, the runtime, the expected result;
its `quick:` section makes `--quick` finish in under a minute on 2 CPU cores.
"""

import argparse
import dataclasses
import difflib
import functools
import inspect
import pathlib
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that does not match its schema."""


def _field_types(schema) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _build(schema, data: Mapping, where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = _field_types(schema)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key '{where}{key}'{hint}")
        kwargs[key] = _convert(fields[key], value, f"{where}{key}")
    return schema(**kwargs)


def _convert(tp, value, where):
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        return _build(tp, value or {}, where + ".")
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
            raise ConfigError(f"'{where}': expected a mapping, got {value!r}")
        return dict(value)
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


def load(path, schema, *, quick: bool = False, overrides: list[str] | tuple[str, ...] = ()):
    """Loads `path` into `schema` (a frozen dataclass); `quick` applies the file's `quick:`
    section; `overrides` are tyro-style `--a.b value` arguments."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    quick_section = data.pop("quick", None) or {}
    if quick:
        data = _merge(data, quick_section)
    try:
        _build(schema, quick_section, "quick.")  # the quick section is checked even when unused
        cfg = _build(schema, data, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def _override_paths(schema, prefix=""):
    out = []
    for name, tp in _field_types(schema).items():
        if _is_dataclass_type(tp):
            out += _override_paths(tp, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def apply_overrides(cfg, overrides):
    """`--section.field value` overrides on a config instance, through tyro. A flag that
    names no field is a `ConfigError` naming the closest field."""
    import tyro

    valid = _override_paths(type(cfg))
    for token in overrides:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            name = name[3:] if name.startswith("no_") and name[3:] in valid else name  # --no-flag for booleans
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
                hint = f"; did you mean '--{close[0]}'?" if close else ""
                raise ConfigError(f"unknown override '{token}'{hint}")
    try:
        return tyro.cli(type(cfg), args=list(overrides), default=cfg, console_outputs=False)
    except SystemExit:
        raise ConfigError(f"bad override(s): {' '.join(overrides)}; run with --help for the fields") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def cli(schema, argv=None, *, description: str | None = None, default_config: str | None = None):
    """Parses `--config PATH [--quick] [--out DIR] [overrides...]` and returns `(cfg, args)`.

    **Arguments:**

    - `schema`: the experiment's frozen dataclass.
    - `argv`: the arguments (default `sys.argv[1:]`).
    - `description`: the `--help` text (the module's docstring).
    - `default_config`: the config used when `--config` is not given (else it is required).

    **Returns:** `(cfg, args)`: the resolved config (the file, its `quick:` section with
    `--quick`, then the overrides), and `args` with `config`, `quick` and `out` (default
    `runs/<config name>[-quick]`).

    On a bad config prints one line naming the problem (key and file) to stderr and exits
    with code 2, without a traceback."""
    parser = argparse.ArgumentParser(
        add_help=False,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any field of the config can be overridden: --section.field value (e.g. --estimator.beta 0.05).",
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the config's fields")
    parser.add_argument("--config", default=default_config, required=default_config is None)
    parser.add_argument("--quick", action="store_true", help="the config's quick variant (CI, < 1 minute)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<config name>[-quick])")
    if argv is None:
        argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        import tyro

        parser.print_help()
        print("\nconfig fields (each is also an override flag):\n")
        tyro.cli(schema, args=["--help"])  # prints the fields and exits
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load(args.config, schema, quick=args.quick, overrides=rest)
    except ConfigError as e:
        _fail(e)
    if args.out is None:
        name = pathlib.Path(args.config).stem + ("-quick" if args.quick else "")
        args.out = str(pathlib.Path("runs") / name)
    return cfg, args


def _fail(e: BaseException):
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
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
# Registries: the only place where strings name classes.
# ---------------------------------------------------------------------------------------


def _nd():
    import neurodyn

    return neurodyn


def _lookup(table, name, what):
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {what} '{name}'{hint} (known: {', '.join(table)})")
    return table[name]


def activation(name: str):
    """An activation by name (`logistic`, `tanh`, `relu`, ... as in `nd.activations`)."""
    nd = _nd()
    table = {
        "identity": nd.activations.identity,
        "logistic": nd.activations.logistic,
        "tanh": nd.activations.tanh,
        "hard_logistic": nd.activations.hard_logistic,
        "hard_tanh": nd.activations.hard_tanh,
        "relu": nd.activations.relu,
        "leaky_relu": nd.activations.leaky_relu,
        "elu": nd.activations.elu,
        "softplus": nd.activations.softplus,
        "prelu": nd.activations.PReLU(),
        "maxout": nd.activations.Maxout(2),
    }
    return _lookup(table, name, "activation")


def network_class(name: str):
    """A network class by name, case-insensitive: `ctrnn`, `hopfield`, `layered`, and every
    other final class exported by `nd.networks` (new families appear here by themselves)."""
    nd = _nd()
    table = {
        k.lower(): getattr(nd.networks, k)
        for k in dir(nd.networks)
        if not k.startswith(("_", "Abstract")) and isinstance(getattr(nd.networks, k), type)
    }
    return _lookup(table, name.lower(), "network")


ESTIMATORS = ("BPTT", "RBP", "EP", "RTRL")


def estimator_class(name: str):
    """An estimator class by name, case-insensitive: `bptt`, `rbp`, `ep`, `rtrl`. Looked up
    on `neurodyn` when asked, so an estimator appears as soon as its module lands; one that
    this installation lacks is a clear error."""
    nd = _nd()
    known = {k.lower(): k for k in ESTIMATORS}
    attr = _lookup(known, name.lower(), "estimator")
    if not hasattr(nd, attr):
        raise ConfigError(f"estimator '{name}' is not available in this neurodyn (no nd.{attr} yet)")
    return getattr(nd, attr)


OPTIMIZERS = ("sgd", "adam")


def optimizer(name: str, learning_rate, *, momentum: float = 0.9, nesterov: bool = False):
    """An optax optimiser by name: `sgd` (with heavy-ball `momentum`, the seed notes'
    `dw(n) = alpha dw(n-1) - eta g(n)`; `momentum: 0` is plain SGD) or `adam`.

    `learning_rate` may be a traced array (a sweep axis): build the optimiser inside the
    vmapped function. Weight decay is not an optimiser option: `nd.training.fit(l2=...)`
    adds it to the gradient, so it acts the same with every optimiser."""
    import optax

    _lookup({k: k for k in OPTIMIZERS}, name, "optimizer")
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
    return optax.adam(learning_rate)


def dataset(name: str):
    """A classification data set's loader by name: `digits`, `double_moon`, `mnist1d`,
    `mnist`, `fashion_mnist` (the last two read local IDX files; see `nd.data`)."""
    nd = _nd()
    table = {
        "digits": nd.data.digits,
        "double_moon": nd.data.double_moon,
        "mnist1d": nd.data.mnist1d,
        "mnist": nd.data.idx_images,
        "fashion_mnist": nd.data.idx_images,
    }
    return _lookup(table, name, "data set")


def build_object(spec: Mapping, where: str = ""):
    """Builds an object from `{kind: Name, **kwargs}`, `kind` a (dotted) name in `neurodyn`
    (`EP`, `adjoint.Neumann`, `rtrl.SnAp1`); nested specs with a `kind` are built too.

    An unknown `kind` or argument is a `ConfigError` naming it (prefixed by `where`, e.g.
    `estimators.ep.`) and the closest valid name."""
    nd = _nd()
    spec = dict(spec)
    if "kind" not in spec:
        raise ConfigError(f"'{where.rstrip('.') or 'object'}' needs a 'kind' (e.g. kind: RBP), got {spec}")
    kind = spec.pop("kind")
    target = nd
    for part in str(kind).split("."):
        if not hasattr(target, part):
            names = [k for k in dir(target) if not k.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown kind '{kind}' at '{where}kind' (no neurodyn.{kind}){hint}")
        target = getattr(target, part)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in spec:
        if params and not takes_any and key not in params:
            close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; {kind} takes {', '.join(params)}"
            raise ConfigError(f"unknown key '{where}{key}' for {kind}{hint}")
    kwargs = {
        k: build_object(v, f"{where}{k}.") if isinstance(v, Mapping) and "kind" in v else v for k, v in spec.items()
    }
    try:
        return target(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build '{where.rstrip('.') or kind}' = {kind}({kwargs}): {e}") from None
