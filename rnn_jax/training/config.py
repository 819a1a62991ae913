"""A script's settings as one frozen dataclass: its flags, checks, presets and run identity.

A script declares its settings once, as the fields of a :class:`Config`
subclass; each field says its help, choices and bounds in its metadata
(:func:`setting`)::

    @dataclasses.dataclass(frozen=True)
    class MyConfig(config.Config):
      PRESETS = {"small": {"hidden_size": 32}}
      cell: str = config.setting("gru", "Recurrent cell.", choices=("gru", "lstm"))
      hidden_size: int = config.setting(128, "Units per layer.", lower=1)

    MyConfig.define_flags()                      # --cell, --hidden_size, --preset
    settings, preset = MyConfig.from_flags()     # after absl parsed the command line
    settings = MyConfig.resolve({"hidden_size": 8}, preset="small")   # from Python

From these the class generates the absl flags (type from the annotation,
help, choices, bounds; a ``tuple[int, ...]``, ``tuple[float, ...]`` or
``tuple[str, ...]`` field is a comma-separated list flag, ``--steps=784,4096``,
whose choices and bounds hold for each element), checks a value in one place
(:meth:`Config.validate`: one :class:`~rnn_jax.training.script.UsageError`
line naming the flag, exit status 2 in a script; a subclass adds the checks
that involve several fields in :meth:`Config.check`) and applies presets as
partial configs (the defaults, then the preset's values, then the given ones).

The run identity (:meth:`Config.identity`): what ``config.json`` holds and the
default workdir's name hashes. A field added after runs were published is
declared with ``added=True``: at its default it drops out of the identity, so
every earlier workdir keeps its name and its ``config.json`` still matches. A
field renamed after publication keeps its old JSON key with ``key=``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from typing import Any, Callable, ClassVar, Mapping, Sequence

from rnn_jax.training import script
from rnn_jax.training.script import UsageError


def setting(default: Any, help: str, *,  # pylint: disable=redefined-builtin
            choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
            lower: float | None = None, upper: float | None = None,
            above: float | None = None, below: float | None = None,
            key: str | None = None, added: bool = False, path: bool = False,
            aliases: Sequence[str] = ()) -> Any:
  """A :class:`Config` field: its default and what its flag and its checks need.

  Args:
    default: the value when neither a preset nor the caller gives one.
    help: the flag's help line.
    choices: the allowed values, or a function returning them (a registry
      that other modules may extend after this module is imported).
    lower, upper: inclusive bounds.
    above, below: exclusive bounds.
    key: the JSON key of the field in the run identity, when it differs
      from the field's name (a field renamed after runs were published).
    added: the field came after runs were published; at ``default`` it is
      left out of the identity (see the module doc).
    path: a file path, made absolute when the config is resolved.
    aliases: other flag names for the field (deprecated spellings).

  Returns:
    A ``dataclasses.field`` carrying these in its metadata.
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "choices": choices, "lower": lower, "upper": upper, "above": above,
      "below": below, "key": key, "added": added, "path": path, "aliases": tuple(aliases)})


def _choices(field: dataclasses.Field) -> tuple | None:
  choices = field.metadata.get("choices")
  return tuple(choices() if callable(choices) else choices) if choices is not None else None


def _value_type(cls, field: dataclasses.Field) -> type:
  """The field's value type: ``int`` for ``int | None``, and so on."""
  hint = typing.get_type_hints(cls)[field.name]
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
  return hint


def _element_type(hint) -> type | None:
  """``int`` for a list field's ``tuple[int, ...]``; ``None`` for a scalar field."""
  return typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None


def _shown(value: Any) -> str:
  """A value as its flag spells it: a list's elements joined by commas."""
  return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _bounds_text(field: dataclasses.Field) -> str | None:
  """``"in [0, 1)"``, ``">= 1"``, ... for the field's bounds, or ``None``."""
  meta = field.metadata
  low = (f"[{meta['lower']:g}" if meta["lower"] is not None else
         f"({meta['above']:g}" if meta["above"] is not None else None)
  high = (f"{meta['upper']:g}]" if meta["upper"] is not None else
          f"{meta['below']:g})" if meta["below"] is not None else None)
  if low and high:
    return f"in {low}, {high}"
  if low:
    return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
  if high:
    return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
  return None


def _checked(field: dataclasses.Field, flag: str, kind: type, value: Any, unknown: str,
             every: str) -> Any:
  """``value`` (a field's, or one element of a list field's) checked against the field's type,
  choices and bounds; an ``int`` for a ``float`` becomes a ``float``.

  Raises:
    UsageError: ``"<flag>: must be float"``, ``"<flag>: <unknown>; choose one of ..."``,
      ``"<flag>: must be >= 1"`` (``every`` before ``must`` for a list's element).
  """
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise UsageError(f"{flag}: {every}must be {kind.__name__}")
  choices = _choices(field)
  if choices is not None and value not in choices:
    raise UsageError(f"{flag}: {unknown}; choose one of {', '.join(map(str, choices))}")
  meta = field.metadata
  if ((meta.get("lower") is not None and value < meta["lower"]) or
      (meta.get("upper") is not None and value > meta["upper"]) or
      (meta.get("above") is not None and value <= meta["above"]) or
      (meta.get("below") is not None and value >= meta["below"])):
    raise UsageError(f"{flag}: {every}must be {_bounds_text(field)}")
  return value


@dataclasses.dataclass(frozen=True)
class Config:
  """Base of a script's settings; see the module doc.

  Class attributes a subclass may set:
    PRESETS: named partial configs, ``{name: {field: value}}``.
  """

  PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

  # ------------------------------------------------------------------ building

  @classmethod
  def resolve(cls, overrides: Mapping[str, Any] | Config = (), preset: str | None = None
              ) -> Config:
    """The defaults, then ``preset``'s values, then ``overrides``; checked.

    Args:
      overrides: field values by field name (or identity key); a config of
        this class is taken as it is.
      preset: a key of :attr:`PRESETS`, or ``None``.

    Raises:
      UsageError: an unknown preset or key, or a value :meth:`validate` refuses.
    """
    if isinstance(overrides, cls):
      return overrides.validate()
    if preset is not None and preset not in cls.PRESETS:
      raise UsageError(f"flag --preset={preset}: unknown preset; choose one of "
                       f"{', '.join(sorted(cls.PRESETS))}")
    names = {field.metadata.get("key") or field.name: field.name
             for field in dataclasses.fields(cls)}
    names.update({field.name: field.name for field in dataclasses.fields(cls)})
    overrides = dict(overrides)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
      raise UsageError(f"unknown config keys {unknown}; the keys are the fields of "
                       f"{cls.__name__}")
    values = {**cls.PRESETS.get(preset, {}),
              **{names[name]: value for name, value in overrides.items()}}
    return cls(**values).validate()

  @classmethod
  def define_flags(cls, flag_values=None) -> None:
    """Defines an absl flag per field (and ``--preset`` when there are presets).

    The flags take any value of their type: the choices and bounds are
    checked by :meth:`validate`, so a flag and a value from Python are refused
    alike. A flag's default is the field's: which flags were given
    (:meth:`from_flags`) decides what overrides a preset.
    """
    from absl import flags  # pylint: disable=import-outside-toplevel
    flag_values = flags.FLAGS if flag_values is None else flag_values
    if cls.PRESETS and "preset" not in flag_values:
      flags.DEFINE_string("preset", None, "A named configuration, one of: "
                          f"{', '.join(sorted(cls.PRESETS))} (see the module doc); the "
                          "flags given override its values.", flag_values=flag_values)
    for field in dataclasses.fields(cls):
      if field.name in flag_values:
        continue
      kind = _value_type(cls, field)
      element = _element_type(kind)
      each = "each " if element else ""
      extra = [text for text in (
          f"{each}one of: {', '.join(map(str, _choices(field)))}" if _choices(field) else None,
          f"{each}{_bounds_text(field)}" if _bounds_text(field) else None) if text]
      help_text = field.metadata.get("help", field.name)
      if extra:
        help_text = f"{help_text} ({'; '.join(extra)})"
      if element:
        default = None if field.default is None else [str(value) for value in field.default]
        flags.DEFINE_list(field.name, default, help_text, flag_values=flag_values)
      else:
        define = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
                  float: flags.DEFINE_float, str: flags.DEFINE_string}[kind]
        define(field.name, field.default, help_text, flag_values=flag_values)
      for alias in field.metadata.get("aliases", ()):
        flags.DEFINE_alias(alias, field.name, flag_values=flag_values)

  @classmethod
  def from_flags(cls, flag_values=None, *, use_preset: bool = True
                 ) -> tuple[Config, str | None]:
    """``(config, preset)`` from parsed flags: the flags given override the preset's values."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flag_values = flags.FLAGS if flag_values is None else flag_values
    preset = flag_values["preset"].value if use_preset and cls.PRESETS else None
    given = {field.name: cls._from_flag(field, flag_values[field.name].value)
             for field in dataclasses.fields(cls) if flag_values[field.name].present}
    return cls.resolve(given, preset), preset

  @classmethod
  def _from_flag(cls, field: dataclasses.Field, value: Any) -> Any:
    """A flag's value as the field's type: a list flag's strings become a tuple of its elements."""
    element = _element_type(_value_type(cls, field))
    if element is None or value is None:
      return value
    try:
      return tuple(element(text.strip()) for text in value)
    except ValueError:
      raise UsageError(f"flag --{field.name}={_shown(value)}: must be a comma-separated list "
                       f"of {element.__name__}") from None

  @classmethod
  def from_argv(cls, argv: Sequence[str] | None = None) -> tuple[Config, str | None]:
    """``(config, preset)`` from command-line arguments, parsed by absl into flags of their own.

    For a script whose ``main(argv)`` is also called from Python (a benchmark): each
    call defines this class's flags (:meth:`define_flags`) on a fresh
    ``absl.flags.FlagValues``, so calls do not share state. ``--help`` prints the
    first line of the class's module doc and the flags, and exits with status 0.

    Args:
      argv: the arguments after the program's name (default ``sys.argv[1:]``).

    Raises:
      UsageError: an unknown flag, a value absl cannot parse, a positional
        argument, or what :meth:`resolve` refuses.
    """
    from absl import flags  # pylint: disable=import-outside-toplevel
    argv = list(sys.argv[1:] if argv is None else argv)
    flag_values = flags.FlagValues()
    cls.define_flags(flag_values)
    if {"--help", "-h", "--helpshort"} & set(argv):
      title = (sys.modules[cls.__module__].__doc__ or cls.__name__).strip().splitlines()[0]
      print(f"{title}\n\n{flag_values.get_help()}")
      raise SystemExit(0)
    try:
      rest = flag_values(["", *argv])
    except flags.Error as error:
      raise UsageError(" ".join(str(error).split())) from None
    if len(rest) > 1:
      raise UsageError(f"unexpected arguments {rest[1:]}; all settings are --flags")
    return cls.from_flags(flag_values)

  # ------------------------------------------------------------------ checking

  def validate(self) -> Config:
    """Checks every field's type, choices and bounds, then :meth:`check`; returns the config
    with paths made absolute and integers in float fields made floats.

    Raises:
      UsageError: one line naming the flag and what it must be.
    """
    changes = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      kind = _value_type(type(self), field)
      element = _element_type(kind)
      flag = f"flag --{field.name}={_shown(value)}"
      if value is None:
        if field.default is not None:
          raise UsageError(f"{flag}: give a value")
        continue
      if element is None:
        value = _checked(field, flag, kind, value, f"unknown {field.name}", "")
        if value is not getattr(self, field.name):
          changes[field.name] = value
      else:
        if not isinstance(value, (tuple, list)):
          raise UsageError(f"{flag}: must be a list of {element.__name__}")
        value = changes[field.name] = tuple(
            _checked(field, flag, element, item, f"unknown {item}", "every value ")
            for item in value)
      meta = field.metadata
      if meta.get("path"):
        changes[field.name] = os.path.abspath(value)
    config = dataclasses.replace(self, **changes) if changes else self
    config.check()
    return config

  def check(self) -> None:
    """The checks that involve several fields; a subclass raises :class:`UsageError` naming
    the flag. Called by :meth:`validate` (the base checks nothing)."""

  # ------------------------------------------------------------------ identity

  def to_dict(self) -> dict[str, Any]:
    """Every field by its identity key (``key=`` or its name), in declaration order."""
    return {field.metadata.get("key") or field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)}

  def identity(self) -> dict[str, Any]:
    """What ``config.json`` holds and the default workdir hashes: :meth:`to_dict` without the
    fields declared ``added=True`` that are at their default."""
    return {field.metadata.get("key") or field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if not (field.metadata.get("added") and getattr(self, field.name) == field.default)}

  def default_workdir(self, name: str) -> str:
    """``runs/<name>-<first 8 hex digits of the SHA-256 of the identity's sorted JSON>``."""
    return script.default_workdir(self.identity(), name)



PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")
"""The values of ``--platform``."""


@dataclasses.dataclass(frozen=True)
class DeviceOptions(Config):
  """Where a run computes; the base of each training script's options (not part of a config).

  Attributes:
    platform: the JAX platform (``"cpu"``, ``"gpu"``, ...; ``None``: JAX's
      choice); it can be set only before the process first uses JAX.
    num_devices: the global device count to train on (0: all; on several
      processes, each contributes the same number of its devices).
    coordinator_address: ``host:port`` of process 0, for several processes.
    num_processes: the processes of the run (1: this one alone).
    process_id: this process's index, ``0..num_processes - 1``.
    heartbeat_timeout_seconds: with several processes, how long a process may
      send no heartbeat before JAX's coordination service declares it dead and
      stops the run's other processes (``None``: JAX's default, 100 s in jax 0.10).
  """

  platform: str | None = setting(None, "JAX platform (default: JAX's choice).",
                                 choices=PLATFORMS)
  num_devices: int = setting(0, "Devices to shard each batch over (0: all; several processes: "
                             "the global count).", lower=0)
  coordinator_address: str | None = setting(None, "host:port of process 0, for a run of several "
                                            "processes (jax.distributed.initialize).")
  num_processes: int = setting(1, "Processes (hosts) of the run.", lower=1)
  process_id: int = setting(0, "This process's index in the run.", lower=0)
  heartbeat_timeout_seconds: int | None = setting(
      None, "Several processes: seconds without a heartbeat after which a process counts as "
      "dead and the others stop (default: JAX's, 100).", lower=1)
