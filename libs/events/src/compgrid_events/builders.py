"""Test-data builders: a valid instance of any contract, naming only the fields a test cares about.

``build(InstanceScheduled, datacenter="dc1")`` generates every other required field from its
annotation and constraints; ``examples()`` returns one instance of every contract.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from uuid import UUID

from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from compgrid_events.base import Contract, Event, utc_now, uuid7
from compgrid_events.registry import registry

C = TypeVar("C", bound=Contract)

_STRING_CANDIDATES = ("EUR", "email", "x")
_FACTORIES: dict[type[Any], Callable[[], Any]] = {
    UUID: uuid7,
    datetime: utc_now,
    AwareDatetime: utc_now,
    date: date.today,
    bool: lambda: True,
}


def build(cls: type[C], **overrides: Any) -> C:
    """Return a valid ``cls`` with every required field generated, ``overrides`` winning."""
    values = {
        name: _value(name, field.annotation, field.metadata)
        for name, field in cls.model_fields.items()
        if field.is_required() and name not in overrides
    }
    return cls.model_validate({**values, **overrides})


def examples() -> list[Event]:
    """Return one built instance of every contract declared in ``compgrid_events``."""
    classes = registry.classes()
    return [build(cls) for cls in classes if cls.__module__.startswith("compgrid_events.")]


def _value(name: str, annotation: Any, constraints: list[Any]) -> Any:
    """Return a valid value for one field, dispatching on the shape of its annotation."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _value(name, inner, [*constraints, *_unwrap(extra)])
    if origin in (Union, types.UnionType):
        return _value(name, _first_not_none(annotation), constraints)
    if origin is tuple:
        return (_value(name, get_args(annotation)[0], []),)
    if origin is dict:
        return {}
    if origin is Literal:
        return get_args(annotation)[0]
    return _scalar(name, annotation, constraints)


def _scalar(name: str, annotation: type[Any], constraints: list[Any]) -> Any:
    """Return a valid value for a plain type: model, enum, number, string or factory type."""
    if issubclass(annotation, Contract):
        return build(annotation)
    if issubclass(annotation, Enum):
        return next(iter(annotation))
    if annotation in _FACTORIES:
        return _FACTORIES[annotation]()
    if annotation is int:
        return _lower_bound(constraints)
    if annotation is Decimal:
        return Decimal(_lower_bound(constraints))
    if annotation is float:
        return float(_lower_bound(constraints))
    if annotation is str:
        return _string(name, constraints)
    raise TypeError(f"no builder for field {name!r} of type {annotation!r}; pass an override")


def _lower_bound(constraints: list[Any]) -> int:
    """Return the smallest whole number >= 1 that satisfies any ``gt``/``ge`` constraint."""
    bound = 1
    for item in constraints:
        if (ge := getattr(item, "ge", None)) is not None:
            bound = max(bound, math.ceil(ge))
        if (gt := getattr(item, "gt", None)) is not None:
            bound = max(bound, math.floor(gt) + 1)
    return bound


def _string(name: str, constraints: list[Any]) -> str:
    """Return the field name, or the first stock string, that matches every ``pattern``."""
    patterns = [p for item in constraints if (p := getattr(item, "pattern", None))]
    for candidate in (name, *_STRING_CANDIDATES):
        if all(re.fullmatch(pattern, candidate) for pattern in patterns):
            return candidate
    raise ValueError(f"no stock string for field {name!r} matches {patterns}; pass an override")


def _unwrap(metadata: Iterable[Any]) -> list[Any]:
    """Return the constraints in ``Annotated`` metadata, opening any ``Field(...)`` inside."""
    return [
        c for item in metadata for c in (item.metadata if isinstance(item, FieldInfo) else [item])
    ]


def _first_not_none(annotation: Any) -> Any:
    """Return the first member of a union that is not ``None``."""
    return next(arg for arg in get_args(annotation) if arg is not type(None))
