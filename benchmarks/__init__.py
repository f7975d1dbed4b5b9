"""Benchmarks of the loss terms and train steps against PyTorch peers.

`python -m benchmarks.run` measures everything in one process, on the same
inputs: the loss terms against dm-pix, pytorch-msssim, piq and kornia, and
the train step of every loss variant of the default ablation. It compares
the default train step with the same model written in PyTorch, and reports
the step's achieved FLOP/s and the input pipeline's throughput. It writes
markdown tables to docs/benchmarks.md.
The PyTorch peers come from the `bench` extra. A peer that is not installed
is skipped, and the output names it.
"""
