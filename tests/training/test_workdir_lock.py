"""Tests of rnn_jax.training.workdir_lock and of the one-writer rule of the training scripts.

The lock is checked across real processes (a ``python -c`` child, and
``python -m experiments.train_mnist`` on a tiny synthetic MNIST from
idx_files.py): a second writer is refused with the holder's pid, and a holder
killed with SIGKILL leaves no lock behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from idx_files import make_dataset
from rnn_jax.training import workdir_lock
from scripts import REPO, one_line, run_experiment, start_experiment

_TRY_HOLD = ("import sys; from rnn_jax.training import workdir_lock as w\n"
             "try:\n  w.hold(sys.argv[1])\nexcept w.WorkdirLocked as e:\n"
             "  print(e.holder); sys.exit(3)\n"
             "print('holding', flush=True); sys.stdin.read()")


def _child(workdir) -> subprocess.Popen:
  """A process that takes the lock (or prints the holder and exits 3), then waits on stdin."""
  return subprocess.Popen([sys.executable, "-c", _TRY_HOLD, str(workdir)], cwd=REPO, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_a_second_process_is_refused_until_the_holder_releases(tmp_path):
  workdir = tmp_path / "run"
  workdir_lock.hold(workdir)
  try:
    workdir_lock.hold(workdir)  # Re-entrant in the holding process.
    refused = _child(workdir)
    holder, _ = refused.communicate(timeout=60)
    assert refused.returncode == 3
    assert holder.strip() == f"pid {os.getpid()} on {socket.gethostname()}"
  finally:
    workdir_lock.release(workdir)
  taker = _child(workdir)
  assert taker.stdout.readline() == "holding\n"
  taker.communicate("", timeout=60)
  assert taker.returncode == 0


def test_the_kernel_drops_the_lock_of_a_killed_holder(tmp_path):
  holder = _child(tmp_path)
  assert holder.stdout.readline() == "holding\n"
  with pytest.raises(workdir_lock.WorkdirLocked) as error:
    workdir_lock.hold(tmp_path)
  assert error.value.holder == f"pid {holder.pid} on {socket.gethostname()}"
  assert str(error.value) == f"{tmp_path} is being written by another run ({error.value.holder})"
  holder.kill()
  holder.communicate(timeout=60)
  assert holder.returncode == -signal.SIGKILL
  try:
    workdir_lock.hold(tmp_path)  # No stale lock: the file stays, the lock is gone.
  finally:
    workdir_lock.release(tmp_path)


TINY = ["--cell=gru", "--hidden_size=8", "--batch_size=16", "--unroll=1", "--log_every=1",
        "--checkpoint_every=4", "--eval_batch_size=16", "--plots=false", "--steps=40"]


def _wait_for_line(process: subprocess.Popen, prefix: str) -> None:
  for line in process.stdout:
    if line.startswith(prefix):
      return
  raise AssertionError(f"no line starting {prefix!r}; stderr: {process.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_killed_run_resumes(tmp_path):
  make_dataset(tmp_path / "mnist", n_train=64, n_test=20)
  args = [*TINY, f"--data_dir={tmp_path / 'mnist'}", f"--workdir={tmp_path / 'run'}"]

  # The first run, frozen while it trains (so it is surely running), and a second on its workdir.
  first = start_experiment("train_mnist", *args)
  _wait_for_line(first, "step 2/40")
  first.send_signal(signal.SIGSTOP)
  try:
    line = one_line(run_experiment("train_mnist", *args), 2)
  finally:
    first.send_signal(signal.SIGCONT)
  assert line == (f"error: flag --workdir={tmp_path / 'run'}: another run is writing it "
                  f"(pid {first.pid} on {socket.gethostname()}); wait for it to end, or stop "
                  "it, or use another --workdir"), line
  stdout, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-2000:]
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 41))
  assert len({(r["kind"], r["step"]) for r in records}) == len(records)  # Each record once.
  assert records[-1]["kind"] == "test" and records[-1]["step"] == 40
  assert json.loads(stdout.strip().splitlines()[-1])["resumed_from"] is None

  # A run killed with SIGKILL while it holds the lock: the same command resumes.
  args[-1] = f"--workdir={tmp_path / 'killed'}"
  killed = start_experiment("train_mnist", *args)
  _wait_for_line(killed, "step 10/40")
  killed.kill()
  killed.communicate(timeout=60)
  resumed = run_experiment("train_mnist", *args, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  summary = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert summary["resumed_from"] >= 8 and summary["steps"] == 40
  # The killed process's records past its checkpoint were dropped: each step's records once.
  records = [json.loads(line) for line in open(tmp_path / "killed" / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 41))
  assert len({(r["kind"], r["step"]) for r in records}) == len(records)
