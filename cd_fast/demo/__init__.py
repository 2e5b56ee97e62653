"""The end-to-end demo on an embedded default, and reports from its runs."""

from cd_fast.demo.data import make_dataset
from cd_fast.demo.pipeline import SIZES, DemoStopped, run_demo
from cd_fast.demo.report import write_report

__all__ = ["SIZES", "DemoStopped", "make_dataset", "run_demo", "write_report"]
