"""The distribution rnn_jax.training.language_model.sample_next draws from, against NumPy.

Each case draws 20,000 tokens in one jitted, vmapped call (temperature, top-k
and top-p are traced, so every case shares one compilation) and compares the
frequencies with a float64 NumPy reference: ``softmax(logits / T)`` restricted
to the ``k`` largest logits, then to the nucleus (sorted by probability, the
shortest prefix whose mass reaches ``top_p``), renormalised. With 20,000 draws
a frequency's standard deviation is at most 0.0036, so the tolerances (0.015,
0.02) are more than four of them and a wrong distribution is several times further.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rnn_jax.training import language_model

DRAWS = 20_000
_SAMPLE = jax.jit(jax.vmap(language_model.sample_next, in_axes=(0, None, None, None, None)))


def frequencies(logits, temperature, top_k=0, top_p=1.0, seed=0):
  """How often each token is drawn in ``DRAWS`` seeded calls of ``sample_next``."""
  keys = jax.random.split(jax.random.key(seed), DRAWS)
  tokens = np.asarray(_SAMPLE(keys, np.asarray(logits, np.float32), temperature, top_k, top_p))
  return np.bincount(tokens, minlength=len(logits)) / DRAWS


def reference_distribution(logits, temperature, top_k=0, top_p=1.0):
  """float64 NumPy: softmax(logits / T), kept to the top ``k``, then the nucleus, renormalised."""
  scaled = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-scaled, kind="stable")
  if top_k > 0:
    scaled[order[top_k:]] = -np.inf
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  if top_p < 1.0:
    mass = np.cumsum(probs[order])
    kept = order[:np.argmax(mass >= top_p) + 1]  # The shortest prefix reaching top_p.
    probs = np.where(np.isin(np.arange(len(probs)), kept), probs, 0.0)
    probs /= probs.sum()
  return probs


# The probabilities (0.5, 0.3, 0.2), deliberately not in sorted order.
THREE = np.log([0.2, 0.5, 0.3])
LOGITS = np.array([1.0, 0.2, -0.5, 2.0, -1.5, 0.7])


@pytest.mark.parametrize("top_p, want", [(0.6, [0.0, 0.625, 0.375]), (0.85, [0.2, 0.5, 0.3])])
def test_top_p_keeps_exactly_the_nucleus(top_p, want):
  np.testing.assert_allclose(reference_distribution(THREE, 1.0, top_p=top_p), want, atol=1e-12)
  got = frequencies(THREE, 1.0, top_p=top_p)
  np.testing.assert_allclose(got, want, atol=0.02)
  if top_p == 0.6:
    assert got[0] == 0.0  # Outside the nucleus: never drawn.


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits_once(temperature):
  want = reference_distribution(LOGITS, temperature)
  # Applying the temperature twice (softmax(logits / T^2)) is far outside the tolerance.
  assert np.abs(reference_distribution(LOGITS, temperature ** 2) - want).max() > 0.05
  np.testing.assert_allclose(frequencies(LOGITS, temperature), want, atol=0.015)


@pytest.mark.parametrize("temperature, top_k, top_p", [(2.0, 3, 1.0), (0.5, 4, 1.0),
                                                       (2.0, 5, 0.8)])
def test_top_k_and_top_p_combine_with_a_temperature(temperature, top_k, top_p):
  want = reference_distribution(LOGITS, temperature, top_k, top_p)
  assert np.count_nonzero(want) >= 2  # A real draw among several tokens, not the argmax.
  got = frequencies(LOGITS, temperature, top_k, top_p)
  np.testing.assert_allclose(got, want, atol=0.015)
  np.testing.assert_array_equal(got[want == 0], 0.0)
