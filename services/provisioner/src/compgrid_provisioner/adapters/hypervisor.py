"""One libvirt host, through ``libvirt-python``.

Every method blocks (libvirt-python is synchronous); :class:`HostPool` runs them in worker
threads. Domains are found by UUID (the instance id) and recognised as CompGrid's by their
metadata element. A libvirt error after which the connection is dead becomes
:class:`HostUnreachableError` and the connection is opened again on next use.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import TypeVar
from uuid import UUID

import libvirt

from compgrid_provisioner.adapters.simulated import SavedDomain, SavedDomains
from compgrid_provisioner.domain.domain_xml import (
    NAMESPACE,
    DomainSpec,
    Meta,
    domain_xml,
    read_meta,
)
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed


def find_domain(conn: libvirt.virConnect, instance_id: UUID) -> libvirt.virDomain | None:
    """The instance's domain on a host (its UUID is the instance id), or None."""
    try:
        return conn.lookupByUUIDString(str(instance_id))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


class HypervisorError(Exception):
    """Libvirt refused or failed an operation; the message is libvirt's."""


class HostUnreachableError(HypervisorError):
    """The host's libvirt cannot be reached."""


class Power(StrEnum):
    """A domain's state as CompGrid cares about it."""

    RUNNING = "running"
    OFF = "off"
    MISSING = "missing"


_UP = {
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN,
    libvirt.VIR_DOMAIN_PMSUSPENDED,
}


@dataclass(frozen=True)
class Found:
    """A CompGrid domain on a host."""

    meta: Meta
    power: Power


@dataclass(frozen=True)
class Sample:
    """One reading of a running domain."""

    cpu_time_ns: int
    memory_used_mib: float


def _message(exc: libvirt.libvirtError) -> str:
    return str(exc.get_error_message() or exc).strip()


class Hypervisor:
    """A connection to one host's libvirt (opened on first use, reopened after it died)."""

    def __init__(self, uri: str, *, domain_type: str, storage_pool: str, pool_path: str) -> None:
        self.uri = uri
        self.simulated = uri.startswith("test:")
        self.domain_type = "test" if self.simulated else domain_type
        self._pool_name = storage_pool
        self._pool_path = pool_path
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._saved = SavedDomains.of(uri) if self.simulated else None

    # Connection --------------------------------------------------------------------------

    def connect(self) -> libvirt.virConnect:
        """Return the open connection, opening it when needed."""
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                # A simulated host lives inside its connection: reopening it restores what
                # was saved of it.
                self._conn = None
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HostUnreachableError(f"{self.uri}: {_message(exc)}") from None
            self._restore(self._conn)
            return self._conn

    def _restore(self, conn: libvirt.virConnect) -> None:
        """Give a freshly opened simulated host the domains it had when last changed."""
        for saved in self._saved.load() if self._saved is not None else []:
            try:
                dom = conn.defineXML(saved.xml)
                if saved.running and dom.state()[0] not in _UP:
                    dom.create()
            except libvirt.libvirtError as exc:
                log.warning("simulated domain not restored", uri=self.uri, error=_message(exc))

    def _keep(self, conn: libvirt.virConnect, instance_id: UUID) -> None:
        """Save a simulated domain's state after a change (a real host keeps it by itself)."""
        if self._saved is None:
            return
        dom = find_domain(conn, instance_id)
        if dom is None:
            self._saved.forget(str(instance_id))
            return
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        self._saved.save(str(instance_id), SavedDomain(xml, dom.state()[0] in _UP))

    def close(self) -> None:
        """Close the connection (a simulated host's domains are kept on disk)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _run(self, what: str, work: Callable[[libvirt.virConnect], T]) -> T:
        conn = self.connect()
        try:
            return work(conn)
        except libvirt.libvirtError as exc:
            alive = False
            with contextlib.suppress(libvirt.libvirtError):
                alive = bool(conn.isAlive())
            if not alive:
                with self._lock:
                    if self._conn is conn:
                        self._conn = None
                raise HostUnreachableError(f"{self.uri}: {what}: {_message(exc)}") from None
            raise HypervisorError(f"{what}: {_message(exc)}") from None

    # Domains -----------------------------------------------------------------------------

    def power(self, instance_id: UUID) -> Power:
        """Whether the instance's domain runs, is off, or does not exist."""

        def work(conn: libvirt.virConnect) -> Power:
            dom = find_domain(conn, instance_id)
            if dom is None:
                return Power.MISSING
            return Power.RUNNING if dom.state()[0] in _UP else Power.OFF

        return self._run("read state", work)

    def define_and_start(self, spec: DomainSpec) -> None:
        """Define the domain (or keep the one already defined) and start it when it is off."""

        def work(conn: libvirt.virConnect) -> None:
            dom = find_domain(conn, spec.meta.instance_id)
            if dom is None:
                dom = conn.defineXML(domain_xml(spec))
            if dom.state()[0] not in _UP:
                dom.create()
            self._keep(conn, spec.meta.instance_id)

        self._run("create domain", work)

    def start(self, instance_id: UUID) -> Power:
        """Start the domain if it is off; MISSING when there is none."""

        def work(conn: libvirt.virConnect) -> Power:
            dom = find_domain(conn, instance_id)
            if dom is None:
                return Power.MISSING
            if dom.state()[0] not in _UP:
                dom.create()
                self._keep(conn, instance_id)
            return Power.RUNNING

        return self._run("start domain", work)

    def stop(self, instance_id: UUID, timeout_s: float) -> Power:
        """Ask the guest to shut down; destroy it when it has not after ``timeout_s``."""

        def ask(conn: libvirt.virConnect) -> libvirt.virDomain | None:
            dom = find_domain(conn, instance_id)
            if dom is None or dom.state()[0] not in _UP:
                return None
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:  # no ACPI and no agent: go straight to destroy
                log.info("graceful shutdown refused", instance=str(instance_id), error=str(exc))
                return dom
            self._keep(conn, instance_id)
            return dom

        dom = self._run("shut down domain", ask)
        if dom is None:
            return self.power(instance_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.power(instance_id) is not Power.RUNNING:
                return self.power(instance_id)
            time.sleep(0.2)

        def force(conn: libvirt.virConnect) -> Power:
            found = find_domain(conn, instance_id)
            if found is None:
                return Power.MISSING
            if found.state()[0] in _UP:
                log.info("guest ignored shutdown; destroying", instance=str(instance_id))
                found.destroy()
                self._keep(conn, instance_id)
            return Power.OFF

        return self._run("destroy domain", force)

    def reboot(self, instance_id: UUID) -> Power:
        """Ask the guest to reboot (a guest that ignores it keeps running)."""

        def work(conn: libvirt.virConnect) -> Power:
            dom = find_domain(conn, instance_id)
            if dom is None:
                return Power.MISSING
            if dom.state()[0] not in _UP:
                return Power.OFF
            try:
                dom.reboot()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                dom.reset()
            return Power.RUNNING

        return self._run("reboot domain", work)

    def remove(self, instance_id: UUID, volumes: list[str]) -> None:
        """Destroy and undefine the domain and delete its volumes; what is gone already is fine."""

        def work(conn: libvirt.virConnect) -> None:
            dom = find_domain(conn, instance_id)
            if dom is not None:
                if dom.state()[0] in _UP:
                    dom.destroy()
                flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                try:
                    dom.undefineFlags(flags)
                except libvirt.libvirtError:
                    dom.undefine()
            self._keep(conn, instance_id)
            self._delete_volumes(conn, volumes)

        self._run("delete domain", work)

    def _delete_volumes(self, conn: libvirt.virConnect, names: list[str]) -> None:
        if not names:
            return
        try:
            pool = conn.storagePoolLookupByName(self._pool_name)
        except libvirt.libvirtError:
            return
        for name in names:
            try:
                pool.storageVolLookupByName(name).delete()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise

    def sample(self, instance_id: UUID) -> Sample | None:
        """CPU time and memory of a running domain; None when it is not running."""

        def work(conn: libvirt.virConnect) -> Sample | None:
            dom = find_domain(conn, instance_id)
            if dom is None:
                return None
            state, _max_kib, memory_kib, _vcpus, cpu_ns = dom.info()
            if state not in _UP:
                return None
            used_kib = memory_kib
            with contextlib.suppress(libvirt.libvirtError):
                used_kib = dom.memoryStats().get("rss", memory_kib)
            return Sample(cpu_time_ns=int(cpu_ns), memory_used_mib=used_kib / 1024)

        return self._run("sample domain", work)

    def addresses(self, instance_id: UUID) -> tuple[str, ...]:
        """The guest's IP addresses where libvirt knows them (DHCP leases), else none."""

        def work(conn: libvirt.virConnect) -> tuple[str, ...]:
            dom = find_domain(conn, instance_id)
            if dom is None or self.simulated:
                return ()
            try:
                found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
            except libvirt.libvirtError:
                return ()
            return tuple(
                address["addr"]
                for interface in (found or {}).values()
                for address in interface.get("addrs") or ()
            )

        return self._run("read addresses", work)

    def ours(self) -> list[Found]:
        """Every domain on the host that carries CompGrid's metadata."""

        def work(conn: libvirt.virConnect) -> list[Found]:
            found: list[Found] = []
            for dom in conn.listAllDomains():
                try:
                    xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
                    state = dom.state()[0]
                except libvirt.libvirtError:
                    continue  # not ours (no such metadata), or gone meanwhile
                meta = read_meta(xml)
                if meta is not None:
                    found.append(Found(meta, Power.RUNNING if state in _UP else Power.OFF))
            return found

        return self._run("list domains", work)

    # Storage -----------------------------------------------------------------------------

    def _pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        try:
            pool = conn.storagePoolLookupByName(self._pool_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>{self._pool_name}</name>"
                f"<target><path>{self._pool_path}</path></target></pool>"
            )
            pool.build(0)
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create()
        return pool

    def create_overlay(self, name: str, backing: str, backing_format: str, size_gib: int) -> str:
        """A qcow2 volume backed by the image (copy-on-write); return its path."""

        def work(conn: libvirt.virConnect) -> str:
            pool = self._pool(conn)
            try:
                return str(pool.storageVolLookupByName(name).path())
            except libvirt.libvirtError:
                pass
            vol = pool.createXML(
                f"<volume><name>{name}</name><capacity unit='GiB'>{size_gib}</capacity>"
                # Thin: the overlay holds only what the guest writes, not its full size.
                "<allocation>0</allocation><target><format type='qcow2'/></target>"
                f"<backingStore><path>{backing}</path><format type='{backing_format}'/>"
                "</backingStore></volume>"
            )
            return str(vol.path())

        return self._run("create disk", work)

    def upload(self, name: str, data: bytes) -> str:
        """A raw volume holding ``data`` (the cloud-init seed); return its path."""

        def work(conn: libvirt.virConnect) -> str:
            pool = self._pool(conn)
            try:
                vol = pool.storageVolLookupByName(name)
            except libvirt.libvirtError:
                vol = pool.createXML(
                    f"<volume><name>{name}</name><capacity unit='B'>{len(data)}</capacity>"
                    "<target><format type='raw'/></target></volume>"
                )
            stream = conn.newStream()
            try:
                vol.upload(stream, 0, len(data))
            except libvirt.libvirtError as exc:
                stream.abort()
                # The test driver keeps no volume contents; a simulated seed is its name alone.
                if self.simulated and exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return str(vol.path())
                raise
            sent = 0
            while sent < len(data):
                sent += stream.send(data[sent : sent + 256 * 1024])
            stream.finish()
            return str(vol.path())

        return self._run("write seed", work)


class HostPool:
    """One :class:`Hypervisor` per libvirt URI, used from worker threads.

    A host whose connection fails is not tried again before its backoff (doubling from
    ``retry_initial_s`` up to ``retry_max_s``) has passed; meanwhile its last error is raised
    at once, so a dead host does not hold up the others.
    """

    def __init__(
        self,
        *,
        domain_type: str,
        storage_pool: str,
        pool_path: str,
        retry_initial_s: float,
        retry_max_s: float,
        threads: int = 20,
        connect_timeout_s: float = 15.0,
    ) -> None:
        self._options = {
            "domain_type": domain_type,
            "storage_pool": storage_pool,
            "pool_path": pool_path,
        }
        self._hosts: dict[str, Hypervisor] = {}
        self._failures: dict[str, tuple[int, float, str]] = {}
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._connect_timeout_s = connect_timeout_s
        # libvirt calls block; they get threads of their own so a slow one (a guest given its
        # shutdown timeout) never starves the rest of the process's thread pool.
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="libvirt")

    def hypervisor(self, uri: str) -> Hypervisor:
        """The (possibly not yet connected) hypervisor of a URI."""
        found = self._hosts.get(uri)
        if found is None:
            found = self._hosts[uri] = Hypervisor(uri, **self._options)
        return found

    async def call(self, uri: str, work: Callable[[Hypervisor], T]) -> T:
        """Run ``work`` on the host's hypervisor in a thread, connecting first."""
        failed = self._failures.get(uri)
        if failed is not None and time.monotonic() < failed[1]:
            raise HostUnreachableError(failed[2])
        host = self.hypervisor(uri)
        try:
            await asyncio.wait_for(self._in_thread(host.connect), self._connect_timeout_s)
        except HostUnreachableError as exc:
            self._failed(uri, str(exc))
            raise
        except TimeoutError:
            self._failed(uri, f"{uri}: no answer within {self._connect_timeout_s:g} s")
            raise HostUnreachableError(self._failures[uri][2]) from None
        self._failures.pop(uri, None)
        try:
            return await self._in_thread(partial(work, host))
        except HostUnreachableError as exc:
            self._failed(uri, str(exc))
            raise

    def _in_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _failed(self, uri: str, reason: str) -> None:
        count = self._failures.get(uri, (0, 0.0, ""))[0] + 1
        delay = min(self._retry_initial_s * 2 ** (count - 1), self._retry_max_s)
        self._failures[uri] = (count, time.monotonic() + delay, reason)

    def close(self) -> None:
        """Close every connection and end the threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for host in self._hosts.values():
            host.close()
