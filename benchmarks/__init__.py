"""Benchmarks of the loss terms and train steps against PyTorch peers.

`python -m benchmarks.run` measures, in one process and on the same inputs,
the loss terms against dm-pix, pytorch-msssim, piq and kornia, the train step
of every loss variant of the default ablation, the default train step
against the same model written in PyTorch, the step's achieved FLOP/s and the
input pipeline's throughput. It writes markdown tables to docs/benchmarks.md.
The PyTorch peers come from the `bench` extra; a peer that is not installed
is skipped with a line that says so.
"""
