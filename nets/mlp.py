"""A feedforward network: dense layers of weights and biases with a nonlinearity between."""
import math

import jax
from flax import nnx

from nets import activations
from nets.inits import bias_init as bias_initialiser, kernel_init
from nets.dtypes import compute_dtype, output_dtype
from nets.partitioning import named


class MLP(nnx.Module):
    """`depth` hidden layers of `width` units, then a linear layer to `num_classes` logits.

    Images are flattened, so any input shape works; `depth=0` is a linear model. `init` names
    the weights' initialisation (lecun, glorot, he) and `bias_init` the biases' (zeros, or
    uniform as PyTorch draws them): `nets.inits`.
    """

    def __init__(self, *, input_shape, num_classes, depth=2, width=256, activation="relu",
                 dropout=0.0, init="lecun", bias_init="zeros", dtype="float32",
                 rngs: nnx.Rngs):
        activations.activation(activation)  # an unknown name fails here, not at first call
        self.act = activation
        self.dtype = compute_dtype(dtype)
        if depth < 0 or width < 1:
            raise ValueError(f"an MLP needs model.depth >= 0 and model.width >= 1, got depth "
                             f"{depth} and width {width}")
        weights = kernel_init(init)
        in_features = math.prod(input_shape)
        sizes = [in_features] + [width] * depth
        bias_initialiser(bias_init, 1)  # an unknown name fails here
        # Megatron-LM's pairs: a layer split by its units (columns), then one split by its
        # inputs (rows), whose output is whole again
        names = [("embed", "mlp") if i % 2 == 0 else ("mlp", "embed") for i in range(depth)]
        self.hidden = nnx.List(
            [nnx.Linear(a, b, kernel_init=named(weights, *n),
                        bias_init=named(bias_initialiser(bias_init, a), n[1]),
                        dtype=self.dtype, rngs=rngs)
             for a, b, n in zip(sizes[:-1], sizes[1:], names)]
        )
        self.head = nnx.Linear(sizes[-1], num_classes,
                               kernel_init=named(weights, "mlp" if depth % 2 else "embed",
                                                 "classes"),
                               bias_init=named(bias_initialiser(bias_init, sizes[-1]), "classes"),
                               dtype=self.dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x_BxI, *, train=False, rngs=None) -> jax.Array:
        rngs = None if rngs is None else nnx.Rngs(dropout=rngs)  # a fresh key per layer
        x_BxD = x_BxI.reshape(x_BxI.shape[0], -1).astype(self.dtype)
        for layer in self.hidden:
            x_BxD = activations.activation(self.act)(layer(x_BxD))
            x_BxD = self.dropout(x_BxD, deterministic=not train, rngs=rngs)
        return self.head(x_BxD).astype(output_dtype(self.dtype))

