"""The machine side of a run: device and backends, the Triton self-check, torchrun, precision, the matrix floor,
progress, logging and signals. Modules are imported where used; this package imports nothing (the ops and the
training modules import from here)."""
