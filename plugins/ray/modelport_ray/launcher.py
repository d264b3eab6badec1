"""The ``ray`` distributed backend: ranks 1..N-1 of a tensor-parallel model as Ray actors.

:class:`RayLauncher` keeps core's ``WorkerLauncher`` protocol
(``modelport.distributed.launcher``): ``start(job)``, ``dead()``, ``shutdown()``.
Rank 0 is the driver, this process; every other rank is a Ray actor that runs
core's ``run_worker(job, rank)`` in one long remote call, and the ranks talk to
one another through torch.distributed (gloo on the CPU, NCCL on CUDA), never
through Ray. Ray only finds the machines, starts the processes and watches them:

- the cluster: the one this process is already connected to, else the one
  ``RAY_ADDRESS`` names, else one running on this machine (``ray start --head``),
  else a local Ray runtime started here (and shut down with the last launcher
  that used it);
- placement: one placement group per model with one bundle per rank (``{"CPU": 1}``
  with gloo, ``{"GPU": 1}`` with NCCL, vLLM's layout), bundle 0 pinned to the
  driver's node (by its ``ray.io/node-id`` label) because rank 0 runs there; ``STRICT_PACK`` (every rank on the
  driver's node) when the cluster has one node, ``PACK`` when it has more, or the
  strategy ``MODELPORT_RAY_PLACEMENT_STRATEGY`` names;
- the rendezvous: when the cluster has more than one node, a loopback host in the
  job's ``init_method`` becomes the driver node's address, which the other nodes
  can reach.

Ray is imported inside functions only, so loading the plugin stays cheap.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from modelport.errors import ExecutorError

#: The placement strategies Ray accepts for a placement group.
STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")
#: Environment variable: the placement strategy to use instead of the default.
STRATEGY_VARIABLE = "MODELPORT_RAY_PLACEMENT_STRATEGY"
#: Environment variable: seconds to wait for the cluster to place the group and start the actors.
TIMEOUT_VARIABLE = "MODELPORT_RAY_PLACEMENT_TIMEOUT"
#: The default of ``MODELPORT_RAY_PLACEMENT_TIMEOUT`` (a cluster that autoscales may need minutes).
DEFAULT_PLACEMENT_TIMEOUT = 120.0
#: Seconds :meth:`RayLauncher.shutdown` lets running ranks return by themselves before it kills their actors.
STOP_GRACE = 2.0
#: The worker actors' runtime environment. Ray starts worker processes at niceness 15, below the driver; a rank
#: computes in lockstep with the driver, so on a busy machine every step would wait on the deprioritised worker
#: (tokens/s halved on the shared test machine): they run at the driver's priority instead, as mp's workers do.
WORKER_RUNTIME_ENV: dict[str, Any] = {"env_vars": {"RAY_worker_niceness": "0"}}
#: The label Ray puts on every node: its node id (pins rank 0's bundle to the driver's node).
NODE_ID_LABEL = "ray.io/node-id"
#: Names of the worker actors: ``modelport-rank1-<launcher id>`` and so on.
ACTOR_PREFIX = "modelport-rank"
#: Name of the placement groups: ``modelport-tp-<launcher id>``.
GROUP_PREFIX = "modelport-tp-"
#: Driver environment variables a worker gets as well: the plugin selection (``MODELPORT_PLUGINS``...).
FORWARDED_PREFIX = "MODELPORT_"

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})

# How many live launchers rely on a ray.init() that modelport made itself (connected or started).
# The last of them to shut down also shuts that runtime down; a runtime the user initialised is never touched.
_runtime_lock = threading.Lock()
_runtime_users = 0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # the distribution requires ray; a broken install lands here
        raise ExecutorError(
            f"distributed_executor_backend='ray' needs the ray package, which cannot be imported ({exc}); "
            "pip install 'ray>=2.40'"
        ) from exc
    return ray


def placement_strategy(nodes: int, requested: str | None = None) -> str:
    """The placement strategy for a cluster of ``nodes`` alive nodes.

    ``requested`` (else ``MODELPORT_RAY_PLACEMENT_STRATEGY``) wins when set; otherwise
    ``STRICT_PACK`` on one node and ``PACK`` across several (as few nodes as fit,
    since all-reduces across machines are slow).

    Raises:
        ExecutorError: the requested strategy is not one of :data:`STRATEGIES`.
    """
    chosen = requested if requested is not None else os.environ.get(STRATEGY_VARIABLE, "").strip()
    if chosen:
        if chosen.upper() not in STRATEGIES:
            source = "strategy" if requested is not None else STRATEGY_VARIABLE
            raise ExecutorError(
                f"{source}={chosen!r} is not a Ray placement strategy; choose from {', '.join(STRATEGIES)}"
            )
        return chosen.upper()
    return "STRICT_PACK" if nodes <= 1 else "PACK"


def placement_timeout() -> float:
    """Seconds to wait for the placement group and the actors (``MODELPORT_RAY_PLACEMENT_TIMEOUT``, default 120).

    Raises:
        ExecutorError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_PLACEMENT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ExecutorError(f"{TIMEOUT_VARIABLE}={raw!r} must be a positive number of seconds")
    return value


def reachable_init_method(init_method: str, host: str) -> str:
    """``init_method`` with a loopback host replaced by ``host`` (the driver node's address).

    ``tcp://127.0.0.1:29500`` becomes ``tcp://10.0.0.5:29500``; any other host, and
    ``env://`` or ``file://`` methods, are returned unchanged. Rank 0's TCP store
    listens on every interface, so the driver itself may keep the loopback form.
    """
    parts = urlsplit(init_method)
    if parts.scheme != "tcp" or parts.hostname not in _LOOPBACK_HOSTS or parts.port is None:
        return init_method
    shown = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{shown}:{parts.port}"))


def gpu_clash(driver_device: str, visible: str | None, driver_node: str, workers: dict[int, dict[str, Any]]) -> str:
    """Why the GPUs Ray gave the workers clash with the driver's (``""`` when they do not).

    Ray reserves a GPU for rank 0 (bundle 0) but cannot know which one the driver
    uses: its ``device`` option (``cuda:B``, through the driver's own
    ``CUDA_VISIBLE_DEVICES``) decides. A worker actor on the driver's node given that
    same GPU would make NCCL fail; this names it before any worker loads.
    """
    index_text = driver_device.partition(":")[2] or "0"
    if not index_text.isdigit():
        return ""
    index = int(index_text)
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else None
    if ids is not None and index >= len(ids):
        return ""
    physical = ids[index] if ids is not None else str(index)
    on_this_node = {rank: info for rank, info in workers.items() if info.get("node_id") == driver_node}
    given = {
        rank: [str(gpu) for gpu in info.get("accelerators", {}).get("GPU", [])] for rank, info in on_this_node.items()
    }
    for rank, gpus in sorted(given.items()):
        if physical in gpus:
            taken = ", ".join(sorted({gpu for gpus in given.values() for gpu in gpus}))
            return (
                f"Ray gave rank {rank}'s actor GPU {physical}, the GPU the driver (rank 0, device={driver_device!r}) "
                f"uses: NCCL cannot run two ranks on one GPU. The workers on the driver's node have GPU(s) {taken}; "
                "give the driver another one (device='cuda:N')"
            )
    return ""


class RankWorker:
    """The body of one worker actor (made a Ray actor class with ``ray.remote`` at start)."""

    def describe(self) -> dict[str, Any]:
        """Where this actor runs: node id, node address, process id, the accelerators Ray gave it."""
        import ray

        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "pid": os.getpid(),
            "accelerators": {k: list(v) for k, v in context.get_accelerator_ids().items() if v},
        }

    def run(self, target: Callable[[Any, int], None], job: Any, rank: int, env: dict[str, str]) -> None:
        """Run ``target(job, rank)`` (core's ``run_worker``) with the driver's ``MODELPORT_*`` variables.

        The actor's process inherits its node's environment (from ``ray start``), whose
        plugin selection may differ from the driver's: the worker takes the driver's
        ``MODELPORT_*`` variables, set or unset alike, so it loads its shard through
        the same plugins. Returns when ``target`` does.
        """
        for name in [name for name in os.environ if name.startswith(FORWARDED_PREFIX) and name not in env]:
            del os.environ[name]
        os.environ.update(env)
        target(job, rank)


def _core_run_worker() -> Callable[[Any, int], None]:
    from modelport.distributed.launcher import run_worker

    return run_worker


def _join_cluster(ray: Any, world_size: int) -> tuple[bool, str]:
    """Connect this process to Ray; return whether modelport made the connection and how it was found.

    A local runtime started here counts at least ``world_size`` CPUs (Ray's CPUs are
    logical), so that N ranks can be placed on a machine with fewer cores, as ``mp``
    would run them there.
    """
    global _runtime_users
    with _runtime_lock:
        if ray.is_initialized():
            if _runtime_users:
                _runtime_users += 1
                return True, "the Ray runtime modelport started earlier in this process"
            return False, "the Ray runtime this process had already initialised"
        asked = os.environ.get("RAY_ADDRESS", "").strip()
        if asked.startswith("ray://"):
            raise ExecutorError(
                f"RAY_ADDRESS={asked!r} is a Ray Client address, which distributed_executor_backend='ray' does not "
                "support: rank 0 runs in this process, which must be on a node of the cluster; run it on a node "
                "and set RAY_ADDRESS to the head's host:port (or leave it unset to find the local cluster)"
            )
        try:
            ray.init(address=asked or "auto")
            how = f"the Ray cluster at RAY_ADDRESS={asked}" if asked else "the Ray cluster running on this machine"
        except ConnectionError as exc:
            if asked:
                raise ExecutorError(f"cannot connect to the Ray cluster at RAY_ADDRESS={asked!r}: {exc}") from exc
            cores = os.cpu_count() or 1
            ray.init(num_cpus=world_size if world_size > cores else None)
            how = "a local Ray runtime started by modelport (no cluster was running, RAY_ADDRESS is unset)"
        _runtime_users = 1
        return True, how


def _leave_cluster(ray: Any) -> None:
    global _runtime_users
    with _runtime_lock:
        _runtime_users = max(0, _runtime_users - 1)
        if _runtime_users == 0 and ray.is_initialized():
            ray.shutdown()


class RayLauncher:
    """Starts ranks 1..N-1 as Ray actors on a placement group: the ``ray`` distributed executor backend.

    Constructible with no arguments (that is how core builds it); ``strategy``
    overrides the placement strategy and ``target`` the function each actor runs
    (core's ``run_worker`` by default).
    """

    def __init__(self, *, strategy: str | None = None, target: Callable[[Any, int], None] | None = None) -> None:
        self._strategy = strategy
        self._target = target
        self._id = uuid.uuid4().hex[:12]
        self._started = False
        self._closed = False
        self._owns_runtime = False
        self._group: Any = None
        self._actors: dict[int, Any] = {}
        self._runs: dict[int, Any] = {}
        self._ended: dict[int, str] = {}
        #: How this launcher found its cluster (for logs and errors).
        self.cluster = ""
        #: The placement strategy of the group (set by :meth:`start`).
        self.strategy = ""
        #: The ``init_method`` the worker ranks were given.
        self.init_method = ""
        #: Per rank (1..N-1): where its actor runs (``node_id``, ``ip``, ``pid``, ``accelerators``).
        self.workers: dict[int, dict[str, Any]] = {}

    @property
    def group_name(self) -> str:
        """The name of this launcher's placement group (``modelport-tp-<id>``)."""
        return f"{GROUP_PREFIX}{self._id}"

    def actor_name(self, rank: int) -> str:
        """The Ray name of the actor running ``rank``."""
        return f"{ACTOR_PREFIX}{rank}-{self._id}"

    def start(self, job: Any) -> None:
        """Place one bundle per rank, then start ranks 1..N-1 as actors, each running ``run_worker(job, rank)``.

        Returns once every actor runs (their ``run_worker`` calls go on in the
        background; :meth:`dead` watches them).

        Raises:
            ExecutorError: Ray is missing or unreachable, the cluster cannot place
                the group within ``MODELPORT_RAY_PLACEMENT_TIMEOUT``, or an actor fails to start.
        """
        if self._started:
            raise ExecutorError("this RayLauncher has already started its workers; make a new one per model")
        ray = _import_ray()
        self._owns_runtime, self.cluster = _join_cluster(ray, job.world_size)
        self._started = True
        try:
            self._place_and_start(ray, job)
        except BaseException:
            self.shutdown()
            raise

    def _place_and_start(self, ray: Any, job: Any) -> None:
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        timeout = placement_timeout()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        driver_node = ray.get_runtime_context().get_node_id()
        driver_ip = next(
            (node["NodeManagerAddress"] for node in nodes if node["NodeID"] == driver_node),
            ray.util.get_node_ip_address(),
        )
        device = "GPU" if job.backend == "nccl" else "CPU"
        self.strategy = placement_strategy(len(nodes), self._strategy)
        bundles: list[dict[str, float]] = [{device: 1.0} for _ in range(job.world_size)]
        # Rank 0 is this process: its bundle must be on this node. Ray's node-id label says which node exactly
        # (several nodes may share an address); Rays without bundle label selectors get a sliver of the node's
        # own address resource instead, as vLLM does.
        pinned: dict[str, Any] = {}
        labels = next((node.get("Labels") or {} for node in nodes if node["NodeID"] == driver_node), {})
        if NODE_ID_LABEL in labels and "bundle_label_selector" in inspect.signature(placement_group).parameters:
            pinned["bundle_label_selector"] = [{NODE_ID_LABEL: driver_node}] + [{} for _ in bundles[1:]]
        else:
            bundles[0][f"node:{driver_ip}"] = 0.001
        self._group = placement_group(bundles, strategy=self.strategy, name=self.group_name, **pinned)
        ready, _ = ray.wait([self._group.ready()], timeout=timeout)
        if not ready:
            raise ExecutorError(
                f"the Ray cluster could not place {job.world_size} bundles of {{{device!r}: 1}} "
                f"({self.strategy}, bundle 0 on the driver's node {driver_ip}) within {timeout:g} s "
                f"({TIMEOUT_VARIABLE}); the cluster has {_resources(ray.cluster_resources(), device)} in all and "
                f"{_resources(ray.available_resources(), device)} free on {len(nodes)} node(s): see `ray status`"
            )
        placed = placement_group_table(self._group)["bundles_to_node_id"]
        worker_job = job
        if len(nodes) > 1:
            worker_job = dataclasses.replace(job, init_method=reachable_init_method(job.init_method, driver_ip))
        self.init_method = worker_job.init_method
        env = {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIX)}
        actor_class = ray.remote(RankWorker)
        resources = {"num_cpus": 0, "num_gpus": 1} if device == "GPU" else {"num_cpus": 1}
        for rank in range(1, job.world_size):
            self._actors[rank] = actor_class.options(
                name=self.actor_name(rank),
                max_restarts=0,
                runtime_env=WORKER_RUNTIME_ENV,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._group, placement_group_bundle_index=rank
                ),
                **resources,
            ).remote()
        described = [self._actors[rank].describe.remote() for rank in self._actors]
        try:
            found = ray.get(described, timeout=timeout)
        except ray.exceptions.GetTimeoutError as exc:
            raise ExecutorError(
                f"the Ray worker actors did not start within {timeout:g} s ({TIMEOUT_VARIABLE})"
            ) from exc
        except ray.exceptions.RayError as exc:
            raise ExecutorError(f"a Ray worker actor failed to start: {_first_line(exc)}") from exc
        self.workers = dict(zip(self._actors, found, strict=True))
        for rank, where in self.workers.items():
            where["bundle_node_id"] = placed.get(rank)
        if device == "GPU":
            driver_device = str(job.options.get("device") or "cuda")
            clash = gpu_clash(driver_device, os.environ.get("CUDA_VISIBLE_DEVICES"), driver_node, self.workers)
            if clash:
                raise ExecutorError(clash)
        target = self._target or _core_run_worker()
        for rank, actor in self._actors.items():
            self._runs[rank] = actor.run.remote(target, worker_job, rank, env)

    def dead(self) -> list[str]:
        """One line per worker whose actor died or whose ``run_worker`` ended (``[]`` while all run).

        Never blocks: ``ray.wait(..., timeout=0)`` on each rank's ``run_worker``
        call, which resolves when the call returns or raises, or when the actor
        dies (Ray fails its pending calls with ``ActorDiedError``).
        """
        if not self._runs:
            return []
        pending = {ref: rank for rank, ref in self._runs.items() if rank not in self._ended}
        if pending:
            import ray

            try:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in ready:
                    self._ended[pending[ref]] = _why_ended(ray, ref)
            except Exception as exc:  # the runtime itself is gone: every rank with it
                for rank in pending.values():
                    self._ended[rank] = f"the Ray runtime is unreachable ({_first_line(exc)})"
        return [f"rank {rank} ({self._where(rank)}): {why}" for rank, why in sorted(self._ended.items())]

    def _where(self, rank: int) -> str:
        info = self.workers.get(rank, {})
        return f"Ray actor {self.actor_name(rank)} on {info.get('ip', '?')}, pid {info.get('pid', '?')}"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Kill the worker actors, remove the placement group, and release the Ray runtime; idempotent.

        Ranks the driver has told to stop get up to :data:`STOP_GRACE` seconds
        (at most ``timeout``) to return by themselves first. Returns once Ray
        reports the actors dead and the group removed (or ``timeout`` passed). The Ray runtime is shut down only when
        modelport itself initialised it and no other launcher still uses it.
        """
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        ray = sys.modules.get("ray")
        try:
            if ray is not None and ray.is_initialized():
                self._stop_actors(ray, timeout)
                self._remove_group(ray, timeout)
        finally:
            if self._owns_runtime and ray is not None:
                self._owns_runtime = False
                _leave_cluster(ray)

    def _stop_actors(self, ray: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        running = [ref for rank, ref in self._runs.items() if rank not in self._ended]
        if running and not self.dead():
            # Ranks the driver told to stop return from run_worker within moments: let them end cleanly. Ranks
            # that were not told (the driver failed) would never return: they are killed after the grace.
            ray.wait(running, num_returns=len(running), timeout=min(STOP_GRACE, timeout))
        for actor in self._actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        if self._runs:
            # A killed actor's pending call fails at once with ActorDiedError: waiting on the calls waits on the deaths.
            refs = list(self._runs.values())
            ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))

    def _remove_group(self, ray: Any, timeout: float) -> None:
        if self._group is None:
            return
        from ray.util.placement_group import placement_group_table, remove_placement_group

        try:
            remove_placement_group(self._group)
        except Exception:  # already removed
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if placement_group_table(self._group).get("state") in ("REMOVED", None):
                return
            time.sleep(0.02)


def _why_ended(ray: Any, ref: Any) -> str:
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"run_worker raised {type(cause).__name__}: {_first_line(cause)}"
    except ray.exceptions.RayActorError as exc:
        return f"the Ray actor died ({_first_line(exc)})"
    except Exception as exc:
        return f"its run_worker call failed ({type(exc).__name__}: {_first_line(exc)})"
    return "run_worker returned (the worker left the group)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resources(resources: dict[str, float], device: str) -> str:
    return f"{resources.get(device, 0):g} {device}"
