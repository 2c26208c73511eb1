"""hyperoptax: Optax transforms that learn their own hyperparameters by hypergradient descent."""

from hyperoptax._src.alias import (
    adafactor_hd,
    adagrad_hd,
    adam_hd,
    adamw_hd,
    lion_hd,
    nadam_hd,
    rmsprop_hd,
    sgd_hd,
)
from hyperoptax._src.hypergradient import (
    HypergradientState,
    get_learning_rate,
    hypergradient,
)
from hyperoptax._src.hyperoptimize import (
    HyperoptimizeState,
    get_hyperparams,
    hyperoptimize,
)
from hyperoptax._src.recommended import auto_adam_hd

__version__ = "0.1.0"

__all__ = [
    "HypergradientState",
    "HyperoptimizeState",
    "adafactor_hd",
    "adagrad_hd",
    "adam_hd",
    "adamw_hd",
    "auto_adam_hd",
    "get_hyperparams",
    "get_learning_rate",
    "hypergradient",
    "hyperoptimize",
    "lion_hd",
    "nadam_hd",
    "rmsprop_hd",
    "sgd_hd",
]
