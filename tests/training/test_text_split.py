"""rnn_jax.training.text's 90/5/5 split at exact offsets, without the real Tiny Shakespeare file.

The expected offsets follow tensorflow-datasets' ``tiny_shakespeare`` builder,
worked out by hand: ``i = int(len(text) * 0.9)`` ends train, and the rest is
cut at ``int(len(rest) * 0.5)`` into validation then test. The lengths are
chosen where other roundings differ: 1,115,394 (Tiny Shakespeare's own length:
0.9 n = 1,003,854.6, so rounding up or to nearest would give 1,003,855) and
1,029 (the rest is 103 characters: 51.5 rounded to nearest or up would give 52).
"""

from __future__ import annotations

import numpy as np
import pytest

from rnn_jax.training import text


def random_text(length: int) -> str:
  """Seeded lowercase letters: a split at a wrong offset does not match the expected slices."""
  letters = np.random.default_rng(length).integers(ord("a"), ord("z") + 1, length, np.uint8)
  return letters.tobytes().decode("ascii")


@pytest.mark.parametrize("length, train_end, validation_end", [
    (1_115_394, 1_003_854, 1_003_854 + 55_770),  # Rest 111,540: 55,770 and 55,770.
    (1_029, 926, 926 + 51),  # 0.9 n = 926.1; rest 103: 51 and 52.
])
def test_split_ends_at_the_tfds_offsets(length, train_end, validation_end, tmp_path):
  sample = random_text(length)
  splits = text.split_text(sample)
  assert splits["train"] == sample[:train_end]
  assert splits["validation"] == sample[train_end:validation_end]
  assert splits["test"] == sample[validation_end:]
  # The same offsets through the file, with the training split's vocabulary.
  path = tmp_path / "input.txt"
  path.write_text(sample, encoding="utf-8")
  _, vocabulary, ids = text.load_splits(path)
  assert [len(ids[name]) for name in text.SPLITS] == [
      train_end, validation_end - train_end, length - validation_end]
  assert vocabulary.chars == tuple(sorted(set(sample[:train_end])))  # Every letter occurs.
  assert vocabulary.decode(ids["validation"]) == sample[train_end:validation_end]
  assert vocabulary.decode(ids["test"]) == sample[validation_end:]
