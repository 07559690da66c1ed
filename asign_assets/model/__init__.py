"""MSAGNet + CLI trained on the measured spots, and whole-volume imputation.

Only measured data enter here: ``y_measured`` rows for ``measured_idx`` nodes
(:class:`~asign_assets.model.inputs.ModelInputs`). Held-out truth of other sections has no
argument to come in through.

Modules, in the order a run uses them: ``params`` (TrainParams, presets, TrainResult),
``inputs``, ``prepare`` (the training subgraph all members share), ``masks`` (pitch, spatial
masks, validation folds), ``labels`` (propagated labels), ``subgraph`` (subgraphs and the
network run on them), ``losses``, ``member`` (one member's loop), ``ensemble`` (members in
worker processes), ``train`` (:func:`~asign_assets.model.train.train_model`), ``calibration``
(calibration and uncertainty), ``inference`` (:func:`~asign_assets.model.inference.impute`),
``checkpoint``; ``msagnet`` is the network, ``determinism`` the seeded torch context.
"""
