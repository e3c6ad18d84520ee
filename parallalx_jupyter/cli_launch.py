"""`parallalx launch [options] SCRIPT [ARGS]`: the CLI's side of ``px.launch`` for a script.

The job runs in the CLI's process (like `parallalx run`), listed by this device's server when
one is found; progress (the script's ``px.report``) goes to stderr, one clear line on a
mistake (no such script, a working directory over the cap, no cluster).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from .commands import CommandError as CliError


def launch_script(args: argparse.Namespace, *, follow: Callable[..., Any],
                  client_for: Callable[[argparse.Namespace], Any]) -> Any:
    """Start the script's job and follow it to its end (``follow``: ``cli.follow_job``;
    ``client_for``: the CLI's choice of cluster)."""
    from .client import ApiClient
    from .workloads.base import WorkloadError
    from .workloads.launch import LaunchWorkload
    from .workloads.launch_script import ScriptError, launch_params, script_run
    from .workloads.runner import start

    os.environ["PARALLALX_JOB_OWNER"] = "cli"
    try:
        fn = script_run(args.script, list(args.script_args or []), args.working_dir)
    except ScriptError as err:
        raise CliError(f"launch: {err}") from None
    workload = LaunchWorkload()
    report: Any = False
    if args.server is not None:
        url, token = args.server
        report = ApiClient(url, token, timeout=10)
    try:
        params = workload.validate(launch_params(fn, args))  # --max-restarts -1: one line
        job = start(workload, params, client=client_for(args), name=args.name, report=report)
    except (WorkloadError, CliError) as err:  # CliError: `client_for` refused the scheduler
        raise CliError(str(err)) from None
    except Exception as err:  # no cluster, cannot connect: one line
        raise CliError(f"launch: {type(err).__name__}: {err}") from None
    return follow(args, workload, job)
