"""What the training scripts share: refusals, the workdir's config, flag parsing, exit statuses.

``experiments/train_mnist.py`` and ``experiments/train_char_lm.py`` behave the
same way through these:

* every refusal (a bad flag value, a platform this machine lacks, a missing
  extra, a workdir holding another config) is a :class:`UsageError`: one
  line on stderr and exit status 2, before any work;
* a run's directory remembers its config (``config.json``) and a rerun with
  another one is refused instead of silently resuming;
* a run's directory has one writer: :func:`open_run` refuses a second run on a
  directory another process is writing (:mod:`rnn_jax.training.workdir_lock`);
* :func:`with_exit_codes` maps failures to one line on stderr and an exit
  status: data errors and a non-finite loss 1, SIGINT/SIGTERM ``128 + signum``,
  and in a run of several processes a JAX runtime error (another process died)
  1 at once (:func:`stop_lost_run`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import sys
from typing import Any, Callable, NamedTuple, NoReturn

from rnn_jax.training.idx import DataError


class UsageError(Exception):
  """A run refused before it starts (bad value, unavailable platform or extra): exit status 2."""


def say(line: str) -> None:
  """Prints a progress line, flushed (the scripts' default ``say``)."""
  print(line, flush=True)


def check_extras(plots: bool) -> None:
  """Refuses a run whose optional packages are missing (Orbax always, matplotlib for plots)."""
  needed = {"orbax.checkpoint": "checkpoints"}
  if plots:
    needed["matplotlib"] = "--plots"
  for module, purpose in needed.items():
    try:
      importlib.import_module(module)
    except ImportError as error:
      raise UsageError(f"{purpose} need {module}, which cannot be imported ({error}); "
                       "pip install -e '.[train]'" + (" or pass --plots=false"
                                                         if module == "matplotlib" else ""))


def select_platform(platform: str) -> None:
  """Makes JAX use ``platform``, refusing one this machine lacks; call before any JAX work."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_platforms", platform)
  try:
    jax.devices()
  except Exception as error:  # pylint: disable=broad-except  # RuntimeError, or AssertionError.
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UsageError(f"flag --platform={platform}: not available on this machine ({reason})")


def default_workdir(config: dict, name: str) -> str:
  """``runs/<name>-<first 8 hex digits of the config's SHA-256>``."""
  digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
  return os.path.join("runs", f"{name}-{digest}")


def check_workdir_config(workdir: str, config: dict) -> None:
  """Records ``config`` in ``workdir/config.json``; refuses a different one already there."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as stream:
      saved = json.load(stream)
    changed = [f"--{name}={config.get(name)} (was {saved.get(name)})"
               for name in sorted(set(saved) | set(config)) if saved.get(name) != config.get(name)]
    if changed:
      raise UsageError(f"flag --workdir={workdir}: holds a run with other settings: "
                       f"{', '.join(changed)}; use another --workdir")
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as stream:
      json.dump(config, stream, indent=1, sort_keys=True)
  except OSError as error:
    raise UsageError(f"flag --workdir={workdir}: cannot write there "
                     f"({error.strerror or error})") from error


def parse_flags(argv):
  """absl's parser of the global ``FLAGS``, but a bad flag gives one line on stderr and status 2."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    message = " ".join(str(error).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def with_exit_codes(main: Callable[[list], None]) -> Callable[[list], None]:
  """``main`` with every failure as one line on stderr and its exit status (see the module doc)."""
  import jax  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import loop  # pylint: disable=import-outside-toplevel

  def main_with_exit_codes(argv):
    try:
      main(argv)
    except UsageError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    except DataError as error:  # One line, even for the list of places tried.
      print(f"data error: {' '.join(str(error).split())}", file=sys.stderr)
      sys.exit(1)
    except loop.NonFiniteLoss as error:
      print(f"stopped: {error}", file=sys.stderr)
      sys.exit(1)
    except loop.Interrupted as error:
      print(f"interrupted: {error}", file=sys.stderr)
      sys.exit(128 + error.signum)
    except KeyboardInterrupt:  # Outside the training loop: the saved checkpoints stand.
      print("interrupted: SIGINT received outside the training loop; the checkpoints already "
            "saved are kept; rerun the same command to resume", file=sys.stderr)
      sys.exit(128 + signal.SIGINT)
    except jax.errors.JaxRuntimeError as error:
      if jax.process_count() == 1:
        raise
      stop_lost_run(error)

  return main_with_exit_codes


def stop_lost_run(error: Exception) -> NoReturn:
  """Ends a process of a multi-process run after a runtime error: one line, exit status 1, now.

  When another process dies, the survivors' next collective fails with a
  ``JaxRuntimeError`` (gloo's "Connection reset by peer" on CPU). Exiting
  normally would then wait in JAX's shutdown barrier for the dead process until
  the heartbeat timeout and abort with a C++ stack trace; ``os._exit`` skips it.
  """
  import jax  # pylint: disable=import-outside-toplevel
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  print(f"stopped: process {jax.process_index()} of {jax.process_count()}: {first_line}; if "
        "another process of the run died, rerun the same command on every host: it resumes "
        "from the newest complete checkpoint", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def data_mesh(options, batch_size: int):
  """Joins the other processes (if any), selects the platform, returns the data mesh.

  The first JAX work of a run: ``jax.distributed.initialize`` must come before
  anything starts JAX's backends.

  Args:
    options: a script's options, with ``coordinator_address``,
      ``num_processes``, ``process_id``, ``platform`` and ``num_devices``.
    batch_size: the global batch, which must divide by the device count.

  Returns:
    The one-axis ``data`` mesh of :func:`rnn_jax.training.distributed.make_data_mesh`.

  Raises:
    UsageError: bad process flags, a platform this machine lacks, more
      devices than there are, a batch that does not divide by the device count.
  """
  from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel
  try:
    distributed.initialize(options.coordinator_address, options.num_processes,
                           options.process_id, options.heartbeat_timeout_seconds)
  except ValueError as error:
    raise UsageError(f"flag --{error}") from error
  if options.platform:
    select_platform(options.platform)
  try:
    mesh = distributed.make_data_mesh(options.num_devices)
    distributed.check_batch_size(batch_size, mesh.size)
  except ValueError as error:
    raise UsageError(f"flag --{error}") from error
  return mesh


def placement(mesh, sharded) -> str:
  """Where a run trains, for its first line: ``on cpu``, and when ``sharded``
  (the data mesh, or ``None`` on one device) ``, data-parallel over N devices
  of P process(es)``."""
  import jax  # pylint: disable=import-outside-toplevel
  where = f"on {jax.devices()[0].platform}"
  if sharded is not None:
    where += f", data-parallel over {mesh.size} devices of {jax.process_count()} process(es)"
  return where


class TrainingRate:
  """Writes each progress record of :func:`~rnn_jax.training.loop.fit` and measures the run's rate.

  Records after the first interval (which holds the compilation) count towards the rate;
  pass :meth:`on_log` as ``fit``'s ``on_log``.
  """

  def __init__(self, write_metrics: Callable[[str, dict], None], first_step: int, log_every: int):
    self._write = write_metrics
    self._first_counted = first_step + log_every
    self.records: list[dict] = []

  def on_log(self, record: dict) -> None:
    """Writes ``record`` as a ``"train"`` metrics record and keeps it for the rate."""
    if int(record["step"]) > self._first_counted:
      self.records.append(record)
    self._write("train", record)

  def steps_per_second(self, steps_done: int, train_seconds: float) -> float:
    """Steps/s between the first and last counted records, or, for a run too short for two,
    ``steps_done / train_seconds`` (compilation included)."""
    if len(self.records) >= 2:
      first, last = self.records[0], self.records[-1]
      return (last["step"] - first["step"]) / (last["wall_seconds"] - first["wall_seconds"])
    return steps_done / max(train_seconds, 1e-9)


class RunFiles(NamedTuple):
  """What :func:`open_run` gives a script: its checkpoints, the state to start from, its metrics."""

  store: Any
  state: Any
  resumed_from: int | None
  log: Any
  write_metrics: Callable[[str, dict], None]


def become_writer(workdir: str) -> None:
  """Makes this process the one writer of ``workdir`` until it ends
  (:func:`rnn_jax.training.workdir_lock.hold`); the primary process calls it before it
  writes anything there.

  Raises:
    UsageError: another process is writing ``workdir`` (the line names it: pid and host),
      or the directory cannot be written.
  """
  from rnn_jax.training import workdir_lock  # pylint: disable=import-outside-toplevel
  try:
    workdir_lock.hold(workdir)
  except workdir_lock.WorkdirLocked as error:
    raise UsageError(f"flag --workdir={workdir}: another run is writing it ({error.holder}); "
                     "wait for it to end, or stop it, or use another --workdir") from error
  except OSError as error:
    raise UsageError(f"flag --workdir={workdir}: cannot write there "
                     f"({error.strerror or error})") from error


def open_run(workdir: str, state, *, keep_checkpoints: int, primary: bool,
             say: Callable[[str], None]) -> RunFiles:
  """Opens a run's checkpoints and metrics, and resumes from the newest readable checkpoint.

  The primary process must be the run directory's writer (:func:`become_writer`, which
  :func:`~rnn_jax.training.task.train_and_evaluate` calls before it writes anything there);
  this makes sure of it. Also says, on the CPU, when tcmalloc is not preloaded. ``state``
  is the fresh state (its shardings are the restore's target); non-primary processes get
  no metrics log and a ``write_metrics`` that does nothing. The metrics written past the
  restored checkpoint by an interrupted process are dropped (they are written again).

  Raises:
    UsageError: another process is writing ``workdir``; the line names it.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import checkpoint, metrics, runtime  # pylint: disable=import-outside-toplevel
  if primary:
    become_writer(workdir)  # Already held after train_and_evaluate's call: a no-op then.
  if jax.devices()[0].platform == "cpu" and not runtime.fast_allocator_active():
    say("note: running with glibc malloc; installing tcmalloc (Debian: apt-get install "
        "libtcmalloc-minimal4) speeds up CPU training steps up to ~1.4x, picked up automatically")
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                     max_to_keep=keep_checkpoints, log=say)
  restored = store.restore_latest(state)
  resumed_from = None
  if restored is not None:
    resumed_from, state = restored
    say(f"resumed from the checkpoint at step {resumed_from}")
  log = metrics.MetricsLog(workdir) if primary else None
  if log is not None:
    log.drop_after(-1 if resumed_from is None else resumed_from)
  write_metrics = log.write if primary else lambda kind, record: None
  return RunFiles(store, state, resumed_from, log, write_metrics)


def flags_parser(*settings_classes, workdir_help: str) -> Callable[[list], list]:
  """A ``flags_parser`` for ``absl.app.run`` that first defines the flags of each
  :class:`~rnn_jax.training.config.Config` class in ``settings_classes`` and ``--workdir``
  (so that importing a script defines none), then parses as :func:`parse_flags`."""

  def parse(argv):
    from absl import flags  # pylint: disable=import-outside-toplevel
    for settings_class in settings_classes:
      settings_class.define_flags()
    if "workdir" not in flags.FLAGS:
      flags.DEFINE_string("workdir", None, workdir_help)
    return parse_flags(argv)

  return parse


def main_of(run: Callable[..., dict], config_class, options_class) -> Callable[[list], None]:
  """A training script's ``main``, with :func:`with_exit_codes`: the config and options from
  the parsed flags, ``run(config, workdir, options, preset=...)``, and its summary printed
  by process 0 as the last line (one JSON object, ``wall_seconds`` from the start of ``main``).
  """

  def main(argv):
    import time  # pylint: disable=import-outside-toplevel
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
      raise UsageError(f"unexpected arguments {argv[1:]}; all settings are --flags")
    started = time.perf_counter()
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    config, preset = config_class.from_flags()
    options, _ = options_class.from_flags()
    presets = {"preset": preset} if config_class.PRESETS else {}
    summary = run(config, flags.FLAGS.workdir, options, **presets)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    if distributed.is_primary():
      print(json.dumps(summary), flush=True)

  return with_exit_codes(main)
