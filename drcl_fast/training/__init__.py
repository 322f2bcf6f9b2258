"""A run's training: the trainer, SPL and RSC per modality, the closed-form CPU step, units, the rate search,
checkpoints and the checks before a run. Modules are imported where used; this package imports nothing."""
