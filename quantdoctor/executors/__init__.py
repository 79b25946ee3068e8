"""Where independent work runs: in this process ("local", the default) or on Ray actors ("ray").

An executor maps a function, or a method of an object each worker makes once (`WorkerMethod`), over a list of items and
returns the results in the items' order, so what the caller decides from them does not depend on where they ran.
Ray is imported only when the "ray" executor is made.
"""

from quantdoctor.executors.base import EXECUTORS, Executor, WorkerMethod, check_options, make_executor
from quantdoctor.executors.local import LocalExecutor
from quantdoctor.executors.ray import RayExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "WorkerMethod", "check_options", "make_executor"]
