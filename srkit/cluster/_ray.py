"""Connecting to Ray: the cluster at RAY_ADDRESS (Ray's own convention, set by `ray job submit`), else a local one."""

from __future__ import annotations

import os
import signal
import socket
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from srkit._optional import require
from srkit.errors import BackendUnavailableError

# Each actor reserves this many logical CPUs, whatever threads it runs: with whole CPUs a pool on a small node
# takes every CPU and Ray Data's read and write tasks wait for one forever ("backpressured: ResourceBudget").
ACTOR_CPUS = 0.5
ACTOR_START_TIMEOUT_S = 600


def ray_module() -> ModuleType:
    return require("ray", extra="cluster", purpose="--ray")


@dataclass(frozen=True)
class Connection:
    address: str  # "local" when srkit started Ray itself
    started_here: bool
    cpus: float
    gpus: float
    nodes: int


def connect(*, num_cpus: int | None = None) -> Connection:
    """Join the Ray cluster named by RAY_ADDRESS (ray.init honours it), or start a local Ray.

    An already initialised Ray (the Python API inside a user's own Ray program) is used as it is."""
    ray = ray_module()
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                                  "log_to_driver": False}
        if not address:  # a new Ray of our own, even where `ray start` left one running on this machine
            kwargs.update(address="local", num_cpus=num_cpus)
        else:
            check_reachable(address)
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise BackendUnavailableError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}") from None
        finally:
            # ray.init installs its own SIGTERM handler in the driver; srkit's (temp files removed, one line)
            # must stay in charge of this process
            for signum, handler in handlers.items():
                if handler is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signum, handler)
        started_here = not address
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return Connection(address=os.environ.get("RAY_ADDRESS") or "local", started_here=started_here,
                      cpus=float(resources.get("CPU", 0.0)), gpus=float(resources.get("GPU", 0.0)), nodes=nodes)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A plain HOST:PORT that nothing answers on is said in one line now; ray.init would retry for minutes.
    Other forms ("auto", ray://, http://) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc.strerror or exc}; is `ray start --head` "
            "running there? (unset RAY_ADDRESS for a local Ray)") from None


def disconnect(connection: Connection) -> None:
    if connection.started_here:
        ray_module().shutdown()


def quiet_data_context() -> None:
    """Ray Data as srkit's jobs need it: the pool started whole, no locality, no progress bars (srkit prints its
    own summary)."""
    import logging

    ray = ray_module()
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):  # "execution finished in"
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ctx = ray.data.DataContext.get_current()
    # Every actor up before the first batch is handed out, so the work is spread over all of them (otherwise
    # the first actors to load the model take a small job whole); a pool that cannot be placed fails after
    # this long instead of waiting forever.
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    # The rows are file names, not pixels: sending a batch to an actor on the node that holds the block saves
    # nothing, and would favour the driver's node (newer Ray decides this itself and deprecates the switch).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx.execution_options.actor_locality_enabled = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False


def where_am_i() -> tuple[str, str]:
    """(node id, node IP) of the calling Ray worker."""
    ray = ray_module()
    node_id = ray.get_runtime_context().get_node_id()
    # the address the node was started with (`ray start --node-ip-address`), not a guess from the host's routes
    ips = [node.get("NodeManagerAddress") for node in ray.nodes() if node.get("NodeID") == node_id]
    return node_id, (ips[0] if ips and ips[0] else ray.util.get_node_ip_address())
