"""The residual-learning lab: measurements behind the claims of residual learning.

``propagation``: gradient norms per layer at initialisation (the identity path as a gradient
highway) and activation variance per block without normalisation (variance doubling).
``jacobian``: singular values of a block's Jacobian (near-identity blocks).
``depth``: degradation of plain nets and block deletion (the ensemble view) on trained nets.
``landscape``: filter-normalised 1-D and 2-D slices of the loss.
``fixed_point``: a weight-tied block iterated, and when its updates shrink.
``linear``: the linear toys of the theory.
``continual``: tasks learnt on a frozen backbone (residual adapters) or by fine-tuning.
Each has a command under ``experiments/``.
"""

from reszoo.lab import continual, depth, fixed_point, jacobian, landscape, linear, propagation  # noqa: F401
