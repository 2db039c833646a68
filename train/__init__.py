"""Training: state, pure steps, optimizers, losses, sharding, checkpoints, the loop.

Model- and dataset-agnostic: it receives a flax.nnx model and a dataset of numpy batches.
"""
