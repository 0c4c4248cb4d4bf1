"""Where batch jobs run: an embedded local Ray (the default) or an existing cluster.

    with ray_session(address=None, num_cpus=2) as info:   # starts Ray on this machine, stops it after
        ...                                              # info.local, info.cpus, info.gpus
    with ray_session(address="ray://head:10001"):         # or RAY_ADDRESS: the same jobs on a cluster

The embedded Ray listens on loopback only: its node IP is 127.0.0.1, never the machine's network
address (Ray otherwise picks the address of the default route). Ray reads the switch for that,
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (ray/_private/ray_constants.py: `ENABLE_RAY_CLUSTER`), when it is
imported, so it is set before the first `import ray`; worker processes inherit it. Usage statistics and
the dashboard are off, so an embedded run sends nothing off the machine.

When Ray is already initialised by the caller (a test fixture, a notebook) the session reuses it and
leaves it running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from typing import Iterator

from avatar.errors import AvatarError

LOOPBACK = "127.0.0.1"
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""libgomp's busy-wait makes torch threads crawl when processes share cores (see avatar/commands/fit.py)."""


@dataclasses.dataclass
class SessionInfo:
    """What the batch runner needs to know about the Ray it runs on."""

    local: bool
    """True when this process started the Ray it uses (embedded on this machine)."""
    address: str
    """The GCS address (or ray:// client address) of the cluster."""
    cpus: float
    """CPUs the cluster offers in total."""
    gpus: float
    """GPUs the cluster offers in total."""


def import_ray(local: bool):
    """`import ray`, with the loopback switch set first for an embedded cluster; one-line error if absent."""
    if local:
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
    already = "ray" in sys.modules
    try:
        import ray
    except ImportError:
        raise AvatarError("avatar batch needs Ray: pip install 'ray==2.60.0'") from None
    if local and already:  # imported earlier without the switch: set the constant it was read into
        import ray._private.ray_constants as rc

        rc.ENABLE_RAY_CLUSTER = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") not in ("0", "false", "False")
    return ray


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: `--address`, else RAY_ADDRESS, else None (embedded local Ray)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in ("local",):
        return None
    return address


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[SessionInfo]:
    """Start (or join) Ray for the duration of the block; an embedded Ray is always shut down after."""
    address = resolve_address(address)
    ray = import_ray(local=address is None)
    if ray.is_initialized():  # the caller owns this Ray
        yield _info(ray, local=False)
        return
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    prev_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        if address is None:  # workers inherit this process's environment (a runtime_env would slow their start)
            for k, v in env.items():
                os.environ.setdefault(k, v)
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
                     _node_ip_address=LOOPBACK, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise AvatarError(f"cannot start or reach Ray at {address or 'this machine'}: {str(e).splitlines()[0]}") from None
    if prev_term is not None:  # ray.init replaces SIGTERM with sys.exit; keep the caller's (the CLI's Ctrl-C path)
        signal.signal(signal.SIGTERM, prev_term)
    try:
        yield _info(ray, local=address is None)
    finally:
        ray.shutdown()


def _info(ray, local: bool) -> SessionInfo:
    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    addr = getattr(ctx, "gcs_address", "") or ""
    return SessionInfo(local=local, address=str(addr), cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)))
