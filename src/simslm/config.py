"""One path from a stage's config dataclass to the command line, config files and back.

A stage's options are a frozen, keyword-only dataclass deriving from `Config`. Each field
has a type, a default (or none: required) and a docstring written under it, which becomes
its `--help` text. The same class reads `--flags`, a `--config FILE` (JSON, or YAML), and
`key=value` pairs; `Literal[...]` fields become choices, tuple fields lists. `Config`
checks choices on construction and calls `check()`, where a stage states its ranges, so a
bad value fails before any data or model is loaded (torchtitan's `__post_init__`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

_NONE_WORDS = ("none", "null")
# The default of a positional argument left out: argparse gives SUPPRESS to positionals as a string.
_NOT_GIVEN = object()


class ConfigError(ValueError):
    """A config value or file that cannot be used; the message names the file or the option."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every stage config: choices checked and lists made tuples on construction."""

    renamed: ClassVar[dict[str, str]] = {}
    """Old field name -> new one, so files written before a rename still load."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            kind = _unwrap_optional(field_types(type(self))[field.name])
            value = getattr(self, field.name)
            if typing.get_origin(kind) is tuple and isinstance(value, (list, str)):
                # A list from JSON, or the comma-separated text of the command line.
                value = tuple(value) if isinstance(value, list) else parse_text(kind, value, field.name)
                object.__setattr__(self, field.name, value)
            allowed = choices(type(self), field.name)
            if allowed is None or value is None:
                continue
            items = value if typing.get_origin(kind) is tuple else (value,)
            wrong = [item for item in items if item not in allowed]
            if wrong:
                raise ConfigError(f"{flag(field.name)} must be one of {', '.join(map(str, allowed))}, "
                                  f"not {', '.join(map(repr, wrong))}")
        seed = getattr(self, "seed", None)
        if isinstance(seed, int) and seed < 0:  # numpy's generators take none: "expected non-negative integer"
            raise ConfigError(f"--seed must be 0 or more, not {seed}")
        self.check()

    def check(self) -> None:
        """Raise ConfigError for values out of range (a stage overrides this)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Any:
        """The config from plain values (a JSON file's, or parsed options): keys and types checked."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected an object of option names and values")
        names = {field.name for field in dataclasses.fields(cls)}
        resolved: dict[str, Any] = {}
        for key, value in values.items():
            name = cls.renamed.get(key, key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"{source}: unknown option '{key}' (known: {', '.join(sorted(names))})")
            resolved[name] = coerce(field_types(cls)[name], value, name, source)
        missing = [flag(field.name) for field in dataclasses.fields(cls)
                   if field.name not in resolved and _required(field)]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}")
        return cls(**resolved)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists) that `from_dict` reads back to an equal config, in the order of help."""
        values = dataclasses.asdict(self)
        return json.loads(json.dumps({field.name: values[field.name] for field in ordered_fields(type(self))}))


def flag(name: str) -> str:
    """The command-line spelling of a field."""
    return "--" + name.replace("_", "-")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields."""
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """The allowed values of a field: its Literal, or a registry named in its metadata."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if "choices" in field.metadata:
        return tuple(field.metadata["choices"]())
    kind = _unwrap_optional(field_types(cls)[name])
    if typing.get_origin(kind) is tuple:
        kind = typing.get_args(kind)[0]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def registry_choices(registry: dict[str, Any]) -> dict[str, Any]:
    """Field metadata whose choices are a registry's names, read when checked (plugins may add some)."""
    return {"choices": lambda: tuple(registry)}


def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        arguments = [argument for argument in typing.get_args(kind) if argument is not type(None)]
        if len(arguments) == 1:
            return arguments[0]
    return kind


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def parse_text(kind: Any, raw: str, name: str) -> Any:
    """A value typed by the field from its command-line text ("1e6" is a valid int; "a,b" a tuple)."""
    if _is_optional(kind) and raw.strip().lower() in _NONE_WORDS:
        return None
    kind = _unwrap_optional(kind)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return tuple(parse_text(item, part.strip(), name) for part in raw.split(",") if part.strip())
    if typing.get_origin(kind) is Literal:
        kind = type(typing.get_args(kind)[0])
    try:
        if kind is bool:
            word = raw.strip().lower()
            if word not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return word in ("1", "true", "yes")
        if kind is int:
            number = float(raw)
            if not number.is_integer():
                raise ValueError
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{flag(name)}: '{raw}' is not a valid {kind.__name__}") from None
    if kind is int:
        return _within_int64(int(number), name)
    return home_expanded(raw) if kind is str else raw


# A path from the home folder ("~/runs", or "tsc=~/bench" where an option takes LABEL=PATH): a shell expands it on
# the command line, but not in a --config file or after `--out=`, where it named a folder called "~" in the working
# one (and `rm -rf ~` was one step from clearing that away).
_HOME_PATH = re.compile(r"(?P<label>[\w.-]+=)?~(?=/|$)")


def home_expanded(text: str) -> str:
    """`text` with a leading `~` (or `LABEL=~`) as the home folder's path, as a shell gives it."""
    match = _HOME_PATH.match(text)
    if match is None:
        return text
    label = match["label"] or ""
    return label + os.path.expanduser(text[len(label):])


def _argument_type(kind: Any, name: str) -> Callable[[str], Any]:
    """`parse_text` as an argparse type: its error comes out as `argument --lr: 'abc' is not a valid float`
    (argparse names a type error by the type function's name, which a partial lacks)."""
    def parse(raw: str) -> Any:
        try:
            return parse_text(kind, raw, name)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{flag(name)}: ")) from None

    return parse


def coerce(kind: Any, value: Any, name: str, source: str = "config") -> Any:
    """A value from a file (JSON/YAML types) or a parsed option, checked against the field's type."""
    if value is None:
        if _is_optional(kind):
            return None
        raise ConfigError(f"{source}: {flag(name)} cannot be null")
    if isinstance(value, str):
        try:
            return parse_text(kind, value, name)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}" if source != "command line" else str(error)) from None
    kind = _unwrap_optional(kind)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = typing.get_args(kind)[0]
        return tuple(coerce(item, element, name, source) for element in value)
    if origin is Literal:
        kind = type(typing.get_args(kind)[0])
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(kind)
    if expected is not None:
        # bool is an int in Python; a JSON true for a number field is a mistake.
        if not isinstance(value, expected) or (kind is not bool and isinstance(value, bool)):
            if kind is int and isinstance(value, float) and value.is_integer():
                return _within_int64(int(value), name, source)
            raise ConfigError(f"{source}: {flag(name)} must be a {kind.__name__}, not {value!r}")
        return float(value) if kind is float else _within_int64(value, name, source) if kind is int else value
    return value


def _within_int64(value: int, name: str, source: str = "") -> int:
    """`value`, or a ConfigError past what numpy and torch hold in an integer (`--vocab-size 1e30` failed deep in a
    numpy ufunc, `--seed 1e30` at torch's "Overflow when unpacking long long")."""
    if abs(value) >= 2**63:
        where = f"{source}: " if source not in ("", "command line") else ""
        raise ConfigError(f"{where}{flag(name)}: {value:.3g} is too large (an integer option holds less than 2^63)")
    return value


def read_config_file(path: str) -> dict[str, Any]:
    """Option values from a JSON file (YAML too, by suffix, when PyYAML is installed)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError, or no PyYAML installed
        raise ConfigError(f"{path}: not valid {'YAML' if file.suffix in ('.yaml', '.yml') else 'JSON'} "
                          f"({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected an object of option names and values")
    return values


# --- command line --------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (PEP 257 attribute docstrings), inherited ones too."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[:-1]):
        docs.update(_own_field_docs(base))
    return docs


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _describe_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, float) and (value >= 1e5 or 0 < abs(value) < 1e-3):
        return f"{value:g}"
    return str(value)


def _default_in_words(value: Any, doc: str) -> bool:
    """Whether an option's docstring already says what leaving it out does, for a default that only marks it left
    out: "(default: the encoder's)" followed by "(default: None)" said two things, and `assets`' "(default: all)"
    followed by "(default: none)" contradicted itself."""
    return value in (None, "", ()) and re.search(r"\bdefault\b", doc, re.IGNORECASE) is not None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, positional: tuple[str, ...] = (),
                         also_positional: tuple[str, ...] = (), overrides: bool = False) -> None:
    """One option per field of `cls` (its docstring and default as help), plus --config and --print-config.

    Options left out keep the value of the --config file, then the field's default. Fields in `positional` are
    words instead of options; those in `also_positional` are options that may also be given as a word (`plan
    FIT`, as `fit SWEEP`). With `overrides`, trailing `key=value` words are accepted too (the older spelling of
    `train`).
    """
    docs = field_docs(cls)
    hints = field_types(cls)
    for field in ordered_fields(cls):
        kind = hints[field.name]
        required = _required(field)
        help_text = docs.get(field.name, "")
        allowed = choices(cls, field.name)
        if allowed and typing.get_origin(_unwrap_optional(kind)) is tuple:
            help_text += f" Any of: {', '.join(map(str, allowed))}."
        if required and field.name not in positional:
            help_text += " (required)"
        elif not required and not _default_in_words(field.default, help_text):
            help_text += f" (default: {_describe_default(field.default)})"
        help_text = help_text.replace("%", "%%")
        parse = _argument_type(kind, field.name)
        if field.name in positional:
            many = typing.get_origin(_unwrap_optional(kind)) is tuple
            nargs = ("+" if required else "*") if many else (None if required else "?")
            parser.add_argument(field.name, type=parse, help=help_text, nargs=nargs, default=_NOT_GIVEN)
            continue
        bare = _unwrap_optional(kind)
        if bare is bool:
            parser.add_argument(flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(bare) is tuple:
            parser.add_argument(flag(field.name), dest=field.name, nargs="+", type=parse, metavar="VALUE",
                                default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = field.name.upper() if allowed is None else "{" + ",".join(map(str, allowed)) + "}"
            parser.add_argument(flag(field.name), dest=field.name, type=parse, metavar=metavar,
                                default=argparse.SUPPRESS, help=help_text)
            if field.name in also_positional:  # absent, it sets nothing: the option's value stands
                parser.add_argument(field.name, nargs="?", type=parse, metavar=metavar, default=argparse.SUPPRESS,
                                    help=f"the same as {flag(field.name)}")
    parser.add_argument("--config", dest="config_file", metavar="FILE", default=None,
                        help="JSON (or YAML) file of option values; options given here override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value", default=[],
                            help="option values as key=value (same names as the options, with _)")
    parser.set_defaults(config_class=cls)


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """A config's fields as help and `--print-config` list them: the required ones first, then in their order. A
    config built on shared options (`EvalConfig` on the scoring ones, `units fit` on the encoder's) has the
    inherited, optional ones first as a dataclass, and a user reads first what must be given."""
    return sorted(dataclasses.fields(cls), key=lambda field: not _required(field))


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config from parsed arguments: field defaults < --config file < key=value < --flags."""
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config_file", None):
        values.update(read_config_file(args.config_file))
        source = args.config_file
    fields = {field.name for field in dataclasses.fields(cls)}
    for override in getattr(args, "overrides", None) or []:
        key, separator, raw = override.partition("=")
        key = cls.renamed.get(key.strip(), key.strip()).replace("-", "_")
        if not separator or key not in fields:
            raise ConfigError(f"'{override}' is not key=value with a known key ({', '.join(sorted(fields))})")
        values[key] = parse_text(field_types(cls)[key], raw, key)
    for name in fields:
        if hasattr(args, name) and getattr(args, name) is not _NOT_GIVEN:
            value = getattr(args, name)
            if isinstance(value, list):  # nargs="+": each word may itself be a comma list
                value = tuple(item for part in value for item in (part if isinstance(part, tuple) else (part,)))
            values[name] = value
    return cls.from_dict(values, source=source)


def check_output_file(config: Any, name: str, what: str, file: str | os.PathLike | None = None) -> None:
    """Raise ConfigError when the field `name`, an output that is a file (`what`: "the manifest (a file)"), names a
    folder: empty, `.`, or ending in a slash (which the path would drop, writing a file of the folder's name), or an
    existing folder (found only after the work, when the file is moved into place). `file` is the file the value
    stands for, when not the value itself (a codebook `km` is `km.npy`). None passes."""
    value = getattr(config, name)
    if value is None:
        return
    if Path(value).name in ("", ".", "..") or str(value).endswith(("/", os.sep)):
        raise ConfigError(f"{flag(name)} names {what}, not a folder: '{value}'")
    if Path(file if file is not None else value).is_dir():
        raise ConfigError(f"{file if file is not None else value}: a folder, where {flag(name)} names {what}")


def check_not_input(config: Any, name: str, input_name: str, what: str,
                    files: list[str | os.PathLike] | None = None) -> None:
    """Raise ConfigError when the output field `name` is the very file or folder the field `input_name` reads
    (`what` says what writing it would do to that input); `files`: the files the output stands for, when not the
    value itself (a codebook `km` is `km.npy` and `km.json`). Compared by `os.path.realpath`, which, unlike
    `Path.resolve`, says nothing about a symbolic-link loop: the input's own reading names that in one line."""
    out, given = getattr(config, name), getattr(config, input_name)
    if out is None or given is None:
        return
    for written in files if files is not None else [out]:
        if os.path.realpath(written) == os.path.realpath(given):
            raise ConfigError(f"{written}: {what}; write to another {flag(name)}")


def check_device(config: Any) -> None:
    """Raise ConfigError unless --device is auto, cpu, cuda or cuda:N, the devices `machine.torch_device` and training
    take: `--device gpu` was read as CUDA asked for (and `mps` as well), and on a GPU machine it reached torch."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not '{config.device}'")


def check_positive(config: Any, *names: str, allow_zero: bool = False) -> None:
    """Raise ConfigError unless each named field is a finite number > 0 (>= 0 with allow_zero); None passes."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{flag(name)} must be a finite number {bound}, not {value}")
