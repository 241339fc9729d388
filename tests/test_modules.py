"""Every exported class follows equinox's abstract/final pattern:
abstract classes are named Abstract* and not instantiable; concrete classes are never
subclassed; only abstract methods are overridden; fields and __init__ live in one class."""

import importlib
import inspect
import pkgutil

import equinox as eqx
import pytest

import neurodyn as nd


def _exported_modules():
    out = {}
    for mod in [nd, nd.networks, nd.activations, nd.losses, nd.estimators]:
        for name in dir(mod):
            obj = getattr(mod, name)
            if inspect.isclass(obj) and issubclass(obj, eqx.Module) and obj.__module__.startswith("neurodyn"):
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    # Subpackages added later (strategies of RBP, relaxation, ...) are walked too.
    for info in pkgutil.walk_packages(nd.__path__, "neurodyn."):
        if info.name.split(".")[-1].startswith("_"):
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:
            continue
        for name in dir(mod):
            obj = getattr(mod, name)
            if inspect.isclass(obj) and issubclass(obj, eqx.Module) and obj.__module__.startswith("neurodyn"):
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(out.items())


CLASSES = _exported_modules()


def test_there_are_classes_to_check():
    names = [n for n, _ in CLASSES]
    assert any(n.endswith("CTRNN") for n in names) and any(n.endswith("BPTT") for n in names)


def _neurodyn_bases(cls):
    return [b for b in cls.__mro__[1:] if b.__module__.startswith("neurodyn")]


def _is_abstract_annotation(ann) -> bool:
    return "AbstractVar" in str(ann) or "AbstractClassVar" in str(ann)


@pytest.mark.parametrize("name,cls", CLASSES, ids=[n for n, _ in CLASSES])
def test_abstract_final_pattern(name, cls):
    if cls.__name__.startswith("Abstract"):
        # An abstract class declares only abstract variables, never concrete fields.
        for field, ann in vars(cls).get("__annotations__", {}).items():
            assert _is_abstract_annotation(ann), f"{name} declares the concrete field {field!r}"
        return
    assert not inspect.isabstract(cls), f"{name} is final but has abstract methods {sorted(cls.__abstractmethods__)}"
    for base in _neurodyn_bases(cls):
        # Final classes are never subclassed.
        assert base.__name__.startswith("Abstract"), f"{name} subclasses the final class {base.__qualname__}"
        # Only abstract methods (or abstract variables) are overridden.
        for attr in vars(cls):
            if (attr.startswith("__") and attr != "__call__") or attr.startswith("_abc"):
                continue
            if attr not in vars(base):
                if attr in vars(base).get("__annotations__", {}):
                    assert _is_abstract_annotation(vars(base)["__annotations__"][attr])
                continue
            original = vars(base)[attr]
            assert getattr(original, "__isabstractmethod__", False), (
                f"{name}.{attr} overrides the concrete method {base.__qualname__}.{attr}"
            )


def test_abstract_classes_cannot_be_instantiated():
    for name, cls in CLASSES:
        if cls.__name__.startswith("Abstract"):
            with pytest.raises(TypeError):
                cls()
