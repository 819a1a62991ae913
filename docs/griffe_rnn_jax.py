"""Griffe extension for the rnn_jax docs (loaded by mkdocstrings from ``mkdocs.yml``).

The docstrings are Google style with Sphinx roles (``:func:`rnn```). This extension:

* rewrites each role that names an rnn_jax object into a mkdocstrings cross-reference
  (``[`rnn`][rnn_jax.unroll.rnn]``), resolved the way Python resolves the name in the
  docstring's scope; an rnn_jax name that resolves to nothing still becomes a
  cross-reference, so the strict build fails on it ("Could not find cross-reference
  target"); names outside rnn_jax (``jax.lax.scan``) stay inline code;
* turns reST's ``text::`` before an indented block into ``text:`` (the indented block
  already renders as code in Markdown);
* gives a method without a docstring the docstring of the method it overrides
  (``LSTM.init`` shows ``Layer.init``'s);
* shows a :class:`~rnn_jax.training.config.Config` field's default in signatures, not the
  ``setting(default, help, ...)`` call that declares it;
* logs a warning, which fails ``mkdocs build --strict``, for every public function,
  class or method of the public modules that still has no docstring.
"""

from __future__ import annotations

import logging
import re

import griffe

LOGGER = logging.getLogger("mkdocs.plugins.rnn_jax_docs")

# The modules whose public functions, classes and methods must have docstrings.
PUBLIC_MODULES = (
    "rnn_jax", "rnn_jax.cells", "rnn_jax.compose", "rnn_jax.layer", "rnn_jax.linear_rnn",
    "rnn_jax.unroll", "rnn_jax.summary", "rnn_jax.gradient_flow", "rnn_jax.hopfield",
    "rnn_jax.interop", "rnn_jax.linen", "rnn_jax.nnx", "rnn_jax.training", "rnn_jax.kernels",
    "rnn_jax.checks", "rnn_jax.flax_convert", "rnn_jax.export", "rnn_jax.onednn",
    *(f"rnn_jax.training.{name}" for name in (
        "loop", "optim", "classification", "datasets", "idx", "batching", "checkpoint",
        "metrics", "plots", "distributed", "script", "runtime", "text", "language_model",
        "config", "task", "cores", "runs", "workdir_lock")),
)

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`(~?)([\w.]+)(\(\))?`")


def _lookup(pkg: griffe.Module, path: str):
  """The object at dotted ``path`` inside ``pkg`` following imports, or None."""
  parts = path.split(".")
  if parts[0] != pkg.name:
    return None
  obj = pkg
  for depth, part in enumerate(parts[1:], start=1):
    members = obj.members if not isinstance(obj, griffe.Alias) else None
    if members is None:
      obj = _lookup(pkg, obj.target_path)
      if obj is None:
        return None
      members = obj.members
    if part not in members:
      # A submodule that is not a member yet, or an attribute we cannot see: give up.
      return None
    obj = members[part]
    if isinstance(obj, griffe.Alias):
      target = obj.target_path
      if not target.startswith(pkg.name + "."):
        return None
      rest = ".".join(parts[depth + 1:])
      return _lookup(pkg, target + ("." + rest if rest else ""))
  return obj


def _resolve(pkg: griffe.Module, scope: griffe.Object, name: str) -> str | None:
  """The canonical path of ``name`` as written in a docstring of ``scope``, or None."""
  candidates = []
  if name.startswith(pkg.name + ".") or name == pkg.name:
    candidates.append(name)
  else:
    node = scope
    while node is not None:
      candidates.append(f"{node.path}.{name}")
      node = node.parent
    candidates += [f"{pkg.name}.{name}", f"{pkg.name}.training.{name}",
                   f"{pkg.name}.training.loop.{name}"]  # rnn_jax.training re-exports the loop lazily.
  for candidate in candidates:
    obj = _lookup(pkg, candidate)
    if obj is not None:
      return obj.path
  return None


def _rewrite(pkg: griffe.Module, obj: griffe.Object, text: str) -> str:
  def replace(match: re.Match) -> str:
    tilde, name, call = match.groups()
    shown = (name.rsplit(".", 1)[-1] if tilde else name) + (call or "")
    path = _resolve(pkg, obj, name)
    if path is None and not (name.startswith(pkg.name + ".") or "." not in name):
      return f"`{shown}`"  # Outside rnn_jax (jax.lax.scan, optax.adam, ...).
    return f"[`{shown}`][{path or name}]"

  text = ROLE.sub(replace, text)
  return re.sub(r"(\S)::\n", r"\1:\n", text)


def _inherit(cls: griffe.Class) -> None:
  for name, member in cls.members.items():
    if member.is_alias or not member.is_function or member.docstring is not None:
      continue
    for base in cls.mro():
      inherited = base.members.get(name)
      if inherited is not None and not inherited.is_alias and inherited.docstring is not None:
        member.docstring = griffe.Docstring(inherited.docstring.value, parent=member)
        break


def _setting_default(value):
  """The default of a ``training.config.setting(default, help, ...)`` field, else ``None``."""
  name = str(value.function) if isinstance(value, griffe.ExprCall) else ""
  if (name == "setting" or name.endswith(".setting")) and value.arguments:
    return value.arguments[0]
  return None


def _show_setting_defaults(cls: griffe.Class) -> None:
  """A Config field's signature and entry show its default, not the whole ``setting(...)``
  call with its help line (the help is the field's description already)."""
  for member in cls.members.values():
    if not member.is_alias and member.is_attribute:
      default = _setting_default(member.value)
      if default is not None:
        member.value = default
  init = cls.members.get("__init__")
  for parameter in (init.parameters if init is not None and not init.is_alias else ()):
    default = _setting_default(parameter.default)
    if default is not None:
      parameter.default = default


def _walk(obj: griffe.Object):
  yield obj
  for member in obj.members.values():
    if not member.is_alias and (member.is_class or member.is_module is False and member.is_function):
      yield from _walk(member)


class RnnJaxDocs(griffe.Extension):
  """See the module docstring."""

  def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
    if pkg.name != "rnn_jax":
      return
    modules = [_lookup(pkg, path) for path in PUBLIC_MODULES]
    for module in modules:
      for obj in _walk(module):
        if obj.is_class:
          _show_setting_defaults(obj)
    for module in modules:
      for obj in _walk(module):
        if obj.is_class:
          try:
            _inherit(obj)
          except Exception:  # pylint: disable=broad-except  # Unresolvable base (outside).
            pass
    for module in modules:
      for obj in _walk(module):
        for documented in (obj, *(m for m in obj.members.values() if not m.is_alias and m.is_attribute)):
          if documented.docstring is not None:
            documented.docstring.value = _rewrite(pkg, documented, documented.docstring.value)
        public = all(not part.startswith("_") for part in obj.path.split(".")[1:])
        if public and obj.docstring is None and (obj.is_function or obj.is_class):
          LOGGER.warning("%s: public %s without a docstring (%s:%s)", obj.path, obj.kind.value,
                         obj.relative_filepath, obj.lineno)
