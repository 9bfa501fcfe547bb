"""Residual diagnostics for any functional Keras model while it trains: the lab's
measurements (``reszoo.lab``) as one callback, ``Diagnostics``, for reszoo's nets,
keras.applications' and keras-hub's.

What is measured, on a fixed probe batch, every ``every_n_steps`` steps:

- gradient norm per stage (the RMS of each conv kernel's ||dL/dW||) and the first residual
  stage's over the last's: the gradient highway (He et al. 2016, Eq. 5; the lab's experiment 1);
- per block, the variance of the residual branch over that of the skip it is added to, and its
  growth with depth (the lab's experiment 2; Veit et al. 2016);
- drift of the BatchNorm running statistics per stage since the last measurement;
and every ``lesion_every_n_epochs`` epochs, the probe batch's error with each residual block
deleted (its merge returns the skip alone), and the effective depth: how many blocks matter
(Veit et al. 2016, the lab's experiment 5).

Residual blocks are found in the graph: every ``Add`` (or DenseNet's ``Concatenate``) of two
tensors, its branch being the input with the longer path from the model's input; stages are
runs of blocks at one spatial size (layer names by ``reszoo.naming`` where they follow it).

The package: ``graph`` finds the blocks and stages, ``measures`` computes each measurement on a
probe batch, ``callback`` runs them during ``model.fit`` (``Diagnostics``) and keeps the
records (``diagnostics.jsonl``) with their healthy bands.
"""

from reszoo.diagnostics.graph import Block, Structure, structure
from reszoo.diagnostics.measures import (LESION_TOLERANCE, Probe, bn_drift, bn_statistics,
                                         branch_probe, branch_ratios, effective_depth, error, gradient_ratio,
                                         gradients, growth, lesion_errors, stage_gradients)
from reszoo.diagnostics.callback import (BRANCH_BAND, DIAGNOSTICS_FILE, GRADIENT_BAND, WINDOW, Diagnostics, alarms,
                                         read, summary)

__all__ = ["Block", "Structure", "structure", "LESION_TOLERANCE", "Probe", "bn_drift", "bn_statistics",
           "branch_probe", "branch_ratios", "effective_depth", "error", "gradient_ratio", "gradients", "growth",
           "lesion_errors", "stage_gradients", "BRANCH_BAND", "DIAGNOSTICS_FILE", "GRADIENT_BAND", "WINDOW",
           "Diagnostics", "alarms", "read", "summary"]
