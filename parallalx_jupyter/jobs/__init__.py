"""Jobs of every workload, on the side of the process that runs them: the ``Job`` handle
(``handle``), its record fan-out (``hub``), which cluster it runs on (``client``), how a failure
is classified (``failures``), the reporter that feeds the server's job list (``reporter``) and
its Dask event topics, released when it ends (``topics``).

A job runs in the process that holds its objects (the notebook's kernel, the ``parallalx`` CLI,
or a runner the server starts), because models and data sets are Python objects there. That
process registers the job with its device's Jupyter server and posts progress; the server keeps
the list (``server.job_registry.JobRegistry``, persisted in the store; jobs it starts itself:
``server.job_spawner``), emits ``job-progress`` events and answers every progress post with
whether someone asked to cancel. So the panel, the CLI and any kernel see and cancel the same
jobs, whichever surface started them.

This package sits below ``training`` and ``workloads`` and imports neither (nor ``notebook`` or
``server``): see docs/architecture.md.
"""

from __future__ import annotations

ACTIVE_STATES = ("pending", "running", "recovering", "cancelling")
FINAL_STATES = ("finished", "failed", "cancelled")
JOB_STATES = (*ACTIVE_STATES, *FINAL_STATES, "lost")
#: earlier names of states, still accepted (and shown by their current name)
RENAMED_STATES = {"restarting": "recovering"}

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "JOB_STATES", "RENAMED_STATES"]
