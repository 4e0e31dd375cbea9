"""A private redis-server for store-level fault tests: our own process on a free loopback port,
without persistence, so a restart loses every key, exactly like a crashed cache node.

With ``CI=true`` a missing ``redis-server`` fails the test instead of skipping it: a silent skip would
hide every fault test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def free_port(bus: bool = False) -> int:
    """A free loopback port; with ``bus``, one whose cluster bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not bus:
            return port
        if port + 10000 <= 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class RedisServer:
    def __init__(self, directory: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.extra_args = extra_args
        self.cluster = "--cluster-enabled" in extra_args
        self.port = free_port(self.cluster)
        self.started = False
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is not on PATH (CI must install it)")
            pytest.skip("redis-server is not on PATH")
        for _ in range(3):
            if self._start(binary):
                self.started = True
                return
            if self.started:  # a restart keeps its port (a cluster node is known by it)
                break
            self.port = free_port(self.cluster)  # another process took the free port first
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _start(self, binary: str) -> bool:
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--loglevel", "warning", *self.extra_args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                    client.ping()
                return True
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.kill()
                    return False
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since the server started (INFO commandstats), without the commands
        this call's own connection sends (its handshake and INFO)."""
        with self.client() as client:
            stats = client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(entry["calls"])
            for name, entry in stats.items()
            if name not in ("cmdstat_info", "cmdstat_hello", "cmdstat_client|setinfo")
        }


class RedisClusterServers:
    """A Redis Cluster of ``masters`` private redis-server processes without replicas, on free loopback
    ports, each in its own directory (its ``nodes.conf`` survives a restart, so a restarted master
    rejoins the cluster with its slots, but without its keys)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0) -> None:
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000")
        self.replicas = replicas
        self.servers = []
        for i in range(masters * (1 + replicas)):
            (directory / f"node{i}").mkdir(parents=True, exist_ok=True)
            self.servers.append(RedisServer(directory / f"node{i}", args))

    @property
    def url(self) -> str:
        """Every master, comma-separated, as ``[online] url`` takes them."""
        return ",".join(f"redis://127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        for server in self.servers:
            server.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-cli is not on PATH (CI must install it)")
            pytest.skip("redis-cli is not on PATH")
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every master says the cluster is ok and knows every master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._ok(server) for server in self.servers):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the private Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _ok(self, server: RedisServer) -> bool:
        with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1) as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
            known = int(re.search(r"cluster_known_nodes:(\d+)", info).group(1))
            return "cluster_state:ok" in info and known == len(self.servers)

    def role(self, server: RedisServer) -> tuple[str, int | None]:
        """("master", None) or ("slave", the port of its master)."""
        with server.client() as client:
            role = client.execute_command("ROLE")
        name = role[0].decode() if isinstance(role[0], bytes) else role[0]
        return (name, None) if name == "master" else (name, int(role[2]))

    def master_of_most_keys(self) -> RedisServer:
        sizes = []
        for server in self.servers:
            if self.role(server)[0] == "master":
                with server.client() as client:
                    sizes.append((client.dbsize(), server.port, server))
        return max(sizes)[2]

    def fail_over(self, master: RedisServer) -> RedisServer:
        """Promote a replica of ``master`` (CLUSTER FAILOVER: the replica first catches up with its
        master, so no acknowledged write is lost); returns the new master once the cluster is ok."""
        replica = next(s for s in self.servers if self.role(s) == ("slave", master.port))
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 30
        while self.role(replica)[0] != "master":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not take over")
            time.sleep(0.05)
        self.wait_ok()
        return replica

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


def redis_cluster(directory: Path, replicas: int = 0) -> Iterator[RedisClusterServers]:
    """Body of a fixture: a started cluster, stopped (exactly its own processes) at the end."""
    cluster = RedisClusterServers(directory, replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
