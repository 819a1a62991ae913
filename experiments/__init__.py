"""Command-line experiments built on rnn_jax (training scripts)."""
