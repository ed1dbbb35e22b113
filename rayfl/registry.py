"""One way to name anything pluggable: a shipped name or an import path ``pkg.module:attr``.

Every extension point of a config (aggregation rules, control rules, the server optimizer, the
selector, the partitioner, the model, ...) names its factory the same way, and the factory is
resolved in the process that uses it (the server actor, a worker actor, the driver): a user
package only has to be importable there (``pip install`` on every node, or Ray's
``runtime_env={"py_modules": [...]}`` / ``working_dir``; see ``docs/extending.md``).

Parameters are checked against the factory's signature before it is called, so a typo or a
wrong type is a one-line :class:`~rayfl.errors.ConfigError` naming the config field, with a
did-you-mean hint, not a ``TypeError`` from deep inside a Ray actor::

    >>> from rayfl.aggregation.rules import RULES
    >>> build("aggregation.rules[0]", "staleness_weights", RULES, {"lam": 0.3}, "rule")
    Rule(...)
    >>> build("aggregation.rules[0]", "staleness_weight", RULES, {}, "rule")
    Traceback (most recent call last):
    ...
    rayfl.errors.ConfigError: aggregation.rules[0]='staleness_weight' is not a known rule: did you mean 'staleness_weights'? ...

No Ray, no torch: the driver validates configs with it before anything starts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from rayfl.errors import ConfigError
from rayfl.validation import is_int, is_real

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
"""``package.module:attribute`` (the attribute may be dotted: ``module:Class.factory``)."""


def is_import_path(name: Any) -> bool:
    """True for a string shaped like ``package.module:attribute``."""
    return isinstance(name, str) and bool(IMPORT_PATH.match(name))


def resolve(field: str, name: Any, shipped: Mapping[str, Callable[..., Any]], kind: str) -> Any:
    """The factory ``name`` stands for: ``shipped[name]``, or the object at an import path.

    Args:
        field: the config field, for messages (``aggregation.rules[2]``, ``selection.kind``).
        name: a shipped name or ``package.module:attribute``.
        shipped: the names rayfl ships for this extension point.
        kind: what a factory makes, for messages (``rule``, ``selector``, ...).

    Raises:
        ConfigError: an unknown name (with the closest shipped one), a module that does not
            import (with the ImportError's text), a missing or non-callable attribute.
    """
    if isinstance(name, str) and name in shipped:
        return shipped[name]
    if not is_import_path(name):
        raise ConfigError(
            f"{field}={name!r} is not a known {kind}: {_did_you_mean(name, shipped)}use one of "
            f"{', '.join(shipped)} or an import path 'package.module:factory'"
        )
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure while importing user code is a config error
        raise ConfigError(
            f"{field}={name!r}: cannot import {module_name!r} ({type(e).__name__}: {e}): install "
            "the package on every node or ship it with runtime_env (docs/extending.md)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{field}={name!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"{field}={name!r} is a {type(obj).__name__}, not a callable factory of a {kind}"
        )
    return obj


def check_params(
    field: str, factory: Callable[..., Any], params: Any, engine_args: int = 0
) -> dict[str, Any]:
    """Checks ``params`` against ``factory``'s signature; returns them as a dict.

    Args:
        field: the config field the parameters live under, e.g. ``aggregation.rules[1]``.
        factory: the callable they will be passed to as keyword arguments.
        params: a mapping (None means no parameters).
        engine_args: how many leading positional arguments rayfl itself passes (a partitioner
            gets ``labels, num_clients, rng``); they are not config parameters.

    Raises:
        ConfigError: not a mapping, an unknown name (with the closest known one), a value whose
            type contradicts a ``float`` / ``int`` / ``str`` / ``bool`` annotation, or a required
            parameter left out.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(
            f"{field} parameters must be a mapping, got {type(params).__name__}: write "
            "`{}` for the defaults or `{name: value}`"
        )
    parameters = _parameters(factory)
    if parameters is None:  # a builtin or C callable without a signature: nothing to check
        return dict(params)
    own = list(parameters.values())[engine_args:]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own)
    named = {p.name: p for p in own if p.kind not in _VARIADIC}
    for key, value in params.items():
        if key not in named:
            if takes_any:
                continue
            close = difflib.get_close_matches(str(key), list(named), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"use one of: {', '.join(named) or 'none'}"
            )
            raise ConfigError(f"{field}.{key} is not a parameter of {_name_of(factory)}: {hint}")
        _check_type(f"{field}.{key}", value, named[key].annotation)
    missing = [
        n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in params
    ]
    if missing:
        raise ConfigError(
            f"{field} is missing the parameter {missing[0]!r} of {_name_of(factory)}: set it"
        )
    return dict(params)


def build(
    field: str,
    name: Any,
    shipped: Mapping[str, Callable[..., Any]],
    params: Any,
    kind: str,
    params_field: str | None = None,
) -> Any:
    """Resolves ``name``, checks ``params`` and calls the factory with them.

    ``field`` names the entry (``aggregation.rules[3]``), ``params_field`` (default ``field``)
    the place its parameters live (``aggregation.rules.similarity_select``)."""
    factory = resolve(field, name, shipped, kind)
    kwargs = check_params(params_field or field, factory, params)
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{field}={name!r} rejected its parameters ({e}): fix them") from None


def check_callable(field: str, fn: Any, what: str, arity: int) -> None:
    """Checks that ``fn`` can be called with ``arity`` positional arguments.

    ``what`` names it for the message, e.g. ``"its update(step, state, params)"``.
    """
    if not callable(fn):
        raise ConfigError(f"{field}: {what} is not callable ({type(fn).__name__})")
    parameters = _parameters(fn)
    if parameters is None:
        return
    try:
        inspect.Signature(list(parameters.values())).bind(*range(arity))
    except TypeError:
        shown = ", ".join(parameters)
        raise ConfigError(
            f"{field}: {what} must take {arity} positional arguments, but takes ({shown})"
        ) from None


def check_shape(field: str, obj: Any, kind: str, methods: Mapping[str, str]) -> None:
    """Checks that a factory's product has each method, callable with its arguments.

    ``methods`` maps a method name to its signature as the message shows it, e.g.
    ``{"init": "init(params)", "update": "update(step, state, params)"}``; the number of names
    between the parentheses is the positional arity checked.
    """
    if not all(hasattr(obj, m) for m in methods):
        shape = ", ".join(methods.values())
        raise ConfigError(f"{field} returned {type(obj).__name__}, not a {kind} ({shape})")
    for name, signature in methods.items():
        arity = len([a for a in signature[signature.index("(") + 1 : -1].split(",") if a.strip()])
        check_callable(field, getattr(obj, name), f"its {signature}", arity)


# --- helpers -------------------------------------------------------------------------------------

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter] | None:
    try:
        return inspect.signature(fn, eval_str=True).parameters
    except NameError:  # annotations that do not evaluate: check names, not types
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _did_you_mean(name: Any, shipped: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(name), list(shipped), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_type(field: str, value: Any, annotation: Any) -> None:
    """Checks ``value`` against a simple annotation: float takes int too; bool is no number;
    ``X | None`` takes None. Other annotations are the factory's own business."""
    allowed = _simple_types(annotation)
    if allowed is None or (value is None and type(None) in allowed):
        return
    checks = {
        float: is_real,
        int: is_int,
        str: lambda v: isinstance(v, str),
        bool: lambda v: isinstance(v, bool),
    }
    if any(checks[t](value) for t in allowed if t in checks):
        return
    expected = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise ConfigError(
        f"{field}={value!r} must be {expected}, got {type(value).__name__}: fix the type in the "
        "config, or drop the key to use the default"
    )


def _simple_types(annotation: Any) -> tuple[type, ...] | None:
    """The types of ``float``, ``int | None``, ... ; None for anything richer."""
    simple = (float, int, str, bool, type(None))
    if annotation in simple:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if all(a in simple for a in args):
            return args
    return None
