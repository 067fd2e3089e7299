"""Recipes: one YAML file describes one experiment, validated by a pydantic schema.

A recipe is loaded from a file or from a built-in name (`stillroom/recipes/*.yaml`),
overridden with dotted `key=value` pairs from the command line, and validated.
A wrong key, type or value becomes one `RecipeError` line that names the key and
what is allowed, never a pydantic traceback.
"""

from __future__ import annotations

import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stillroom.core.errors import RecipeError

S = TypeVar("S", bound=BaseModel)


class Schema(BaseModel):
    """Base for every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class BaseRecipe(Schema):
    """What every kind of recipe has: a run name (a plain folder name), where run folders go, a seed, and
    named presets (override sets such as `quick`, applied by `load_recipe(..., preset="quick")` or `--quick`)."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value.startswith(".") or value.strip() != value:
            raise ValueError("must be a plain folder name (no '/', not starting with '.', no surrounding spaces)")
        return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error, not a silent overwrite."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key] + 1}); the second would silently win",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def builtin_recipes() -> dict[str, Path]:
    """Names of the recipes shipped with stillroom, and their files."""
    folder = resources.files("stillroom") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def read_recipe(name_or_path: str | Path | None, default: str = "classifier") -> tuple[dict, str]:
    """Read a recipe into a plain dict. Returns the dict and where it came from."""
    name = str(name_or_path) if name_or_path is not None else default
    path = Path(name)
    if not path.is_file():
        shipped = builtin_recipes()
        if name not in shipped:
            raise RecipeError(
                f"no recipe file or built-in recipe named {name!r}",
                hint=f"give a path to a YAML file, or one of: {', '.join(sorted(shipped))}",
            )
        path = shipped[name]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError("the recipe is not valid UTF-8 text", where=str(path)) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"not valid YAML: {problem}", where=where) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of keys to values", where=str(path))
    return data, str(path)


def apply_overrides(data: dict, overrides: Mapping[str, Any] | list[str] | None) -> dict:
    """Set dotted keys in a recipe dict. `["training.lr=1e-4"]` or `{"training.lr": 1e-4}`.

    String values from the command line are parsed as YAML, so `3` is an int and
    `[0, 2]` a list.
    """
    if not overrides:
        return data
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            if "=" not in item:
                raise RecipeError(f"override {item!r} is not of the form key=value", hint="for example --set training.epochs=5")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError:
                value = raw
            pairs.append((key.strip(), value))
    for key, value in pairs:
        if value is None and not isinstance(overrides, list):
            continue  # an unset CLI option leaves the recipe's value alone
        _set_path(data, key, value)
    return data


def _set_path(data: dict, key: str, value: Any) -> None:
    """Set `a.b.0.c` in nested dicts and lists; a number steps into a list."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"cannot set {key!r}: {'.'.join(parts[:depth]) or 'the recipe'} is a list of "
                                  f"{len(node)}, so the next part must be an index from 0 to {len(node) - 1}")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"cannot set {key!r}: {'.'.join(parts[:depth])!r} is a value, not a section")
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def validate(schema: type[S], data: dict, source: str = "recipe") -> S:
    """Validate a recipe dict against a schema, turning errors into one readable `RecipeError`."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(schema, err, data) for err in exc.errors()]
        raise RecipeError("\n  ".join(lines), where=source) from None


def _describe(schema: type[BaseModel], err: dict, data: dict) -> str:
    loc = _user_path(err["loc"], data)
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden" and loc:
        parent = _model_at(schema, loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        text = f"unknown key {key!r}"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            text += f"; did you mean {close[0]!r}?"
        if allowed:
            text += f" Allowed keys here: {', '.join(allowed)}"
        return text
    given = err.get("input")
    shown = "" if isinstance(given, (dict, list)) or kind == "missing" else f" (got {given!r})"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{key}: {given!r} is not allowed; allowed values: {expected}"
    return f"{key}: {err['msg'].removeprefix('Value error, ')}{shown}"


def _user_path(loc: tuple, data: Any) -> list:
    """The error location as the user wrote it, without the tags pydantic adds (`function-after[...]`, `[key]`)."""
    path, node = [], data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (isinstance(node, list) and isinstance(part, int) and part < len(node)):
            path.append(part)
            node = node[part]
        elif isinstance(part, str) and "[" in part:
            continue
        else:
            path.append(part)  # a missing key, or one past what the user gave
            node = None
    return path


def _model_at(schema: type[BaseModel], loc: list) -> type[BaseModel] | None:
    current: Any = schema
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X; list[X] stays (handled by index); Annotated[X, ...] -> X."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(members) == 1:
            return _unwrap(members[0])
        if len(models) == 1:
            return models[0]
    return tp


def apply_preset(data: dict, preset: str | None, source: str = "recipe") -> dict:
    """Apply the recipe's named preset (its `presets.<name>` overrides); None applies none."""
    if preset is None:
        return data
    presets = data.get("presets") or {}
    if preset not in presets:
        raise RecipeError(f"this recipe has no {preset!r} preset", where=source,
                          hint=f"add a presets.{preset} mapping of overrides" + (
                              f", or use one of: {', '.join(sorted(presets))}" if presets else ""))
    return apply_overrides(data, dict(presets[preset]))


def load_recipe(
    schema: type[S],
    name_or_path: str | Path | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
    default: str = "classifier",
    preset: str | None = None,
) -> S:
    """Read, apply a preset, override and validate a recipe in one call."""
    data, source = read_recipe(name_or_path, default=default)
    data = apply_preset(data, preset, source)
    data = apply_overrides(data, overrides)
    return validate(schema, data, source)


def dump_recipe(recipe: BaseModel, path: Path) -> None:
    """Write the resolved recipe, every default filled in, so a run can be repeated."""
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
