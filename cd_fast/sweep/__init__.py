"""The three dimensions of trace compression as one sweep: importance criterion (at a
granularity) x restructuring level x budget, one student per cell, evaluated per domain
(`cdfast sweep`; `cdfast demo` runs one on its generated world)."""

from cd_fast.sweep.config import Cell, SweepConfig, grid_cells
from cd_fast.sweep.report import write_report
from cd_fast.sweep.run import Sweep, SweepStopped, run_sweep

__all__ = [
    "Cell",
    "Sweep",
    "SweepConfig",
    "SweepStopped",
    "grid_cells",
    "run_sweep",
    "write_report",
]
