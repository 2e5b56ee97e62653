"""`cdfast demo`: the embedded world (data.py, tokenizer.py) and a small sweep on it."""

from cd_fast.demo.data import make_dataset
from cd_fast.demo.pipeline import SIZES, run_demo

__all__ = ["SIZES", "make_dataset", "run_demo"]
