"""Who owns a RUNNING MLflow run, and whether that owner still lives: owner tags and a renewed lease.

A stage killed by SIGKILL or power loss cannot end its run, so the next run context closes such
orphans (`close_orphaned_runs`). On a shared tracking server a hostname and a pid prove nothing: two
containers (CI runners, Kubernetes pods) can share both. So the owner is named by what is unique per
process -- `qelm.owner` = "<boot id>:<pid namespace inode>:<pid>:<start time in clock ticks>" -- and it
renews `qelm.lease_expires` (epoch seconds) from a daemon thread while the run is open. A run is
closed only when this host can prove its owner dead (same boot and pid namespace, and that pid is gone
or now another process) or when its lease has expired; runs without these tags are left alone.

QELM_RUN_LEASE_S (default 300) and QELM_RUN_HEARTBEAT_S (default 30) set the lease and its renewal.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

OWNER_TAG, LEASE_TAG, REASON_TAG = "qelm.owner", "qelm.lease_expires", "qelm.closed_reason"
log = logging.getLogger(__name__)


def lease_s() -> float:
    return float(os.environ.get("QELM_RUN_LEASE_S", "300"))


def heartbeat_s() -> float:
    return min(float(os.environ.get("QELM_RUN_HEARTBEAT_S", "30")), lease_s() / 3)  # a few beats per lease


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (after the parenthesised name, which may hold spaces); "" if no such pid."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else ""


def _boot_and_pidns() -> tuple[str, str]:
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux: nothing can be proven, only leases count
        pidns = ""
    return _read("/proc/sys/kernel/random/boot_id"), pidns


def owner_id() -> str:
    pid = os.getpid()
    return ":".join((*_boot_and_pidns(), str(pid), _start_ticks(pid)))


def _alive_here(owner: str) -> bool | None:
    """True/False when this host can tell whether `owner` runs (same boot and pid namespace); else None."""
    parts = owner.split(":")
    if len(parts) != 4 or not all(parts) or not parts[2].isdigit():
        return None
    boot, pidns = _boot_and_pidns()
    if not boot or (parts[0], parts[1]) != (boot, pidns):
        return None
    return _start_ticks(int(parts[2])) == parts[3]  # a reused pid has another start time


def orphan_reason(tags: dict[str, str], now: float) -> str | None:
    """Why the run's owner is gone (close the run), or None (alive, or not provably gone)."""
    owner = tags.get(OWNER_TAG, "")
    alive = _alive_here(owner)
    if alive is False:
        pid = owner.split(":")[2]
        how = "is gone" if not _start_ticks(int(pid)) else "was reused by another process"
        return (f"process {pid} on {tags.get('qelm.host', '?')} ended without closing it "
                f"(same boot and pid namespace as the cleaner; the pid {how})")
    try:
        expires = float(tags.get(LEASE_TAG, ""))
    except ValueError:  # no lease (tags of an older qelm): only a provable death closes it
        return None
    if alive is None and expires < now:
        return f"its lease expired {now - expires:.0f} s ago: owner {owner or '?'} stopped renewing it"
    return None


def close_orphaned_runs(experiment: str) -> list[str]:
    """RUNNING runs of `experiment` whose owner is provably gone or whose lease expired -> KILLED,
    with the reason in tag qelm.closed_reason. -> their ids."""
    from mlflow import MlflowClient
    from mlflow.entities import RunStatus

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    closed, now = [], time.time()
    for run in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'", max_results=200):
        reason = orphan_reason(run.data.tags, now)
        if reason:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            client.set_tag(run.info.run_id, REASON_TAG, reason)
            log.info("closed orphaned MLflow run %s: %s", run.info.run_id, reason)
            closed.append(run.info.run_id)
    return closed


@contextmanager
def held(run_id: str) -> Iterator[None]:
    """Tag `run_id` as owned by this process and renew its lease from a daemon thread until exit."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    tags = {"qelm.host": socket.gethostname(), "qelm.pid": str(os.getpid()), OWNER_TAG: owner_id(),
            LEASE_TAG: f"{time.time() + lease_s():.3f}"}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(heartbeat_s()):
            try:
                client.set_tag(run_id, LEASE_TAG, f"{time.time() + lease_s():.3f}")
            except Exception as err:  # noqa: BLE001 - a missed beat must not fail the stage; the next one retries
                log.info("could not renew the lease of MLflow run %s: %s", run_id, str(err).splitlines()[0][:200])

    beat = threading.Thread(target=renew, name=f"qelm-lease-{run_id}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=10)  # a beat stuck on a dead server must not hold up the exit: it is a daemon
