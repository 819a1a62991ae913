"""Tests of rnn_jax.training.config: flags from fields, one-place checks, presets, run identity."""

from __future__ import annotations

import dataclasses
import os

import pytest
from absl import flags

from experiments import train_char_lm, train_mnist
from rnn_jax.training import config
from rnn_jax.training.config import setting
from rnn_jax.training.script import UsageError

# The default workdirs of the published runs, computed at main 455f72e (before Config):
# the default command and every preset keep these names (and their config.json).
PUBLISHED_MNIST = {None: "default-17e4a2c6", "lstm100": "lstm100-934830cb",
                   "lstm256x2": "lstm256x2-70ba369e", "rnn150": "rnn150-564e5393",
                   "rnn50": "rnn50-ad5613ca", "best": "best-796f1f4a"}
# The char LM's: the default command's, and --preset=best's since issue 22 published its run
# (the preset changed once, to the LSTM 768 of 2026-12-07: a new model, a new workdir).
PUBLISHED_CHAR_LM = {None: "char_lm-04d5ed9a", "best": "char_lm_best-fb1b82c5"}


@dataclasses.dataclass(frozen=True)
class Toy(config.Config):
  PRESETS = {"wide": {"width": 64, "rate": 0.5}}
  width: int = setting(8, "Units.", lower=1)
  rate: float = setting(0.1, "Drop rate.", lower=0.0, below=1.0)
  kind: str = setting("a", "Kind.", choices=("a", "b"))
  steps: int | None = setting(None, "Steps.", lower=1)
  new_thing: int = setting(0, "Added later.", lower=0, added=True)
  vjp: str = setting("auto", "Renamed.", key="backward", aliases=("backward",))

  def check(self):
    if self.kind == "b" and self.width > 32:
      raise UsageError(f"flag --width={self.width}: kind b takes at most 32")


@pytest.mark.parametrize("preset, name", sorted(PUBLISHED_MNIST.items(), key=str))
def test_published_mnist_workdirs_keep_their_names(preset, name):
  settings = train_mnist.MnistConfig.resolve({}, preset)
  assert train_mnist.default_workdir(settings, preset) == os.path.join("runs", name)


@pytest.mark.parametrize("preset, name", sorted(PUBLISHED_CHAR_LM.items(), key=str))
def test_published_char_lm_workdirs_keep_their_names(preset, name):
  settings = train_char_lm.CharLMConfig.resolve({}, preset)
  prefix = train_char_lm.workdir_prefix(preset)
  assert settings.default_workdir(prefix) == os.path.join("runs", name)


def test_a_field_added_later_drops_out_of_the_identity_only_at_its_default():
  held_out = train_mnist.MnistConfig.resolve({"validation_examples": 5000})
  assert "validation_examples" not in train_mnist.MnistConfig().identity()
  assert held_out.identity()["validation_examples"] == 5000
  assert train_mnist.default_workdir(held_out) != os.path.join("runs", PUBLISHED_MNIST[None])
  assert Toy().identity() == {"width": 8, "rate": 0.1, "kind": "a", "steps": None,
                              "backward": "auto"}
  assert Toy(new_thing=2).identity()["new_thing"] == 2


def test_resolve_applies_defaults_then_preset_then_values():
  assert Toy.resolve() == Toy()
  assert Toy.resolve({"rate": 0.2}, "wide") == Toy(width=64, rate=0.2)
  assert Toy.resolve({"backward": "fused"}).vjp == "fused"  # The identity key works too.
  assert Toy.resolve({"rate": 0}).rate == 0.0 and isinstance(Toy.resolve({"rate": 0}).rate, float)


@pytest.mark.parametrize("values, message", [
    ({"width": 0}, "flag --width=0: must be >= 1"),
    ({"rate": 1.0}, "flag --rate=1.0: must be in [0, 1)"),
    ({"kind": "c"}, "flag --kind=c: unknown kind; choose one of a, b"),
    ({"width": "8"}, "flag --width=8: must be int"),
    ({"width": True}, "flag --width=True: must be int"),
    ({"steps": 0}, "flag --steps=0: must be >= 1"),
    ({"kind": "b", "width": 40}, "flag --width=40: kind b takes at most 32"),
    ({"depth": 2}, "unknown config keys ['depth']; the keys are the fields of Toy"),
])
def test_bad_values_are_one_line_naming_the_flag(values, message):
  with pytest.raises(UsageError) as error:
    Toy.resolve(values)
  assert str(error.value) == message


def test_unknown_preset_is_refused():
  with pytest.raises(UsageError, match="flag --preset=huge: unknown preset; choose one of wide"):
    Toy.resolve({}, "huge")


def test_flags_come_from_the_fields_and_given_flags_override_the_preset():
  flag_values = flags.FlagValues()
  Toy.define_flags(flag_values)
  assert "one of: a, b" in flag_values["kind"].help and "in [0, 1)" in flag_values["rate"].help
  flag_values(["prog", "--preset=wide", "--rate=0.25", "--backward=fused"])
  settings, preset = Toy.from_flags(flag_values)
  assert preset == "wide"
  assert settings == Toy(width=64, rate=0.25, vjp="fused")
  flag_values.unparse_flags()
  flag_values(["prog", "--width=0"])  # Parsed: refused by the one check, naming the flag.
  with pytest.raises(UsageError, match="flag --width=0: must be >= 1"):
    Toy.from_flags(flag_values)


def test_paths_become_absolute():
  settings = train_char_lm.CharLMConfig.resolve({"text_file": "some.txt"})
  assert settings.text_file == os.path.abspath("some.txt")


@dataclasses.dataclass(frozen=True)
class Lists(config.Config):
  steps: tuple[int, ...] = setting((784, 4096), "Sequence lengths.", lower=1)
  cells: tuple[str, ...] = setting(("lstm",), "Cells.", choices=("lstm", "gru"))
  rates: tuple[float, ...] = setting((), "Rates.", lower=0.0, upper=1.0)
  no_sweep: bool = setting(False, "Time the defaults only.", aliases=("no-sweep",))


def test_list_fields_are_comma_separated_flags_checked_element_by_element():
  flag_values = flags.FlagValues()
  Lists.define_flags(flag_values)
  assert flag_values["steps"].help == "Sequence lengths. (each >= 1)"
  assert Lists.from_argv([]) == (Lists(), None)
  settings, _ = Lists.from_argv(["--steps", "64", "--cells=gru,lstm", "--rates=0,0.5",
                                 "--no-sweep"])
  assert settings == Lists(steps=(64,), cells=("gru", "lstm"), rates=(0.0, 0.5), no_sweep=True)
  assert isinstance(settings.rates[0], float)
  assert Lists.resolve({"steps": [8, 9]}).steps == (8, 9)  # A list from Python becomes a tuple.
  assert Lists.resolve({"steps": [8]}).identity()["steps"] == (8,)
  for argv, message in (
      (["--steps=784,0"], "flag --steps=784,0: every value must be >= 1"),
      (["--steps=7.5"], "flag --steps=7.5: must be a comma-separated list of int"),
      (["--cells=lstm,lsmt"], "flag --cells=lstm,lsmt: unknown lsmt; choose one of lstm, gru"),
      (["--rates=2"], "flag --rates=2.0: every value must be in [0, 1]"),
      (["--width=3"], "Unknown command line flag 'width'"),
      (["extra"], "unexpected arguments ['extra']; all settings are --flags")):
    with pytest.raises(UsageError) as error:
      Lists.from_argv(argv)
    assert str(error.value) == message
  with pytest.raises(UsageError, match=r"flag --steps=8: must be a list of int"):
    Lists.resolve({"steps": 8})


def test_from_argv_help_prints_every_flag_and_exits_0(capsys):
  with pytest.raises(SystemExit) as done:
    Lists.from_argv(["--help"])
  assert done.value.code == 0
  printed = capsys.readouterr().out
  assert printed.startswith("Tests of rnn_jax.training.config: flags from fields")
  assert "--steps: Sequence lengths. (each >= 1)\n    (default: '784,4096')" in printed
  assert "--[no]no-sweep: Alias for --no_sweep." in printed
