"""Typed configuration: YAML files validated into pydantic models.

Why one loader: every config error must name the file, the dotted field path and the expected type, and every
command accepts the same `--set a.b=c` overrides. Models subclass `StrictModel` so unknown keys are errors.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (file, field, expected type)."""


class StrictModel(BaseModel):
    """Base for every config model: unknown keys fail, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _type_name(tp: Any) -> str:
    if tp is None or tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _expected_type(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """Walk the model's annotations along a pydantic error location to name the expected type."""
    tp: Any = model
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
            continue
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (list, tuple, set) and args:
            tp = args[0]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(models) == 1:
                tp = models[0]
                field = tp.model_fields.get(str(part))
                if field is None:
                    # pydantic puts the union member's tag in loc: skip it
                    continue
                tp = field.annotation
            else:
                continue
        else:
            continue
    return _type_name(tp)


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {dotted}: unknown field (not part of {model.__name__})")
            continue
        expected = _expected_type(model, loc)
        got = e.get("input")
        got_s = f", got {got!r}" if not isinstance(got, (dict, list)) else ""
        exp_s = f" (expected {expected})" if expected else ""
        lines.append(f"  {dotted}: {e['msg']}{exp_s}{got_s}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML so 3 is int, true is bool, [1,2] a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for ov in overrides or []:
        path, value = parse_override(ov)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def validate(model: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None


def load_config(model: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `path` (or the model's defaults when None), apply `--set` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return validate(model, data, str(path) if path is not None else "<defaults>")


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
