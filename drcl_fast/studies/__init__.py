"""The paper's studies as commands, each point the `train` run with a few settings changed.

- `drcl-fast sweep --alpha ... --beta ...` (`studies.sweep.sweep_grid`): the α × β grid, Fig. 3a-b;
- `drcl-fast sweep --prior each` (`studies.sweep.compare_priors`): the prior of each modality and W0, Fig. 3c;
- `drcl-fast ablate` (`studies.ablate.ablate`): without SPL, without MRR, without FA, over seeds.

`studies.points` holds what they share: point records, resume, spreading over torchrun's ranks.
See docs/studies.md.
"""
