"""Dagster run configs build their library parameters by field name, never field by field.

A config class declares only what a user may set (Dagster needs the fields for its launchpad
schema), with the library's defaults; :func:`params_from` passes every field the library
dataclass also has, so a new library parameter needs one line in the config and nothing else.
Fields the library does not have (``workers``, ``threads``) are execution settings, named in
``execution``; ``tests/pipeline/test_config.py`` checks that nothing else is left over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import dagster as dg

T = TypeVar("T")
#: Values that mean "keep the library's (or preset's) default".
UNSET = (None, "preset")


def param_fields(config: dg.Config, cls: type, execution: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """The config's values for ``cls``'s fields (unset values left out), plus ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}
    dumped = config.model_dump()
    stray = set(dumped) - names - set(execution) - set(extra)
    if stray:
        raise TypeError(f"{type(config).__name__} has fields {sorted(stray)} that {cls.__name__} does not; rename them or list them as execution settings")
    values = {k: v for k, v in dumped.items() if k in names and not any(v is u or v == u for u in UNSET)}
    return {**values, **extra}


def params_from(config: dg.Config, cls: type[T], execution: tuple[str, ...] = (), **extra: Any) -> T:
    """``cls`` built from the config by field name (see :func:`param_fields`)."""
    return cls(**param_fields(config, cls, execution, **extra))
