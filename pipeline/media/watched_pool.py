"""urllib3 pool classes whose connections serve one fetch's deadline and address checks.

* Every socket (new, or reused from the pool) is registered with the fetch's
  clock, which cuts it at the deadline (pipeline.media.fetch_clock).
* A new connection goes to the addresses the fetch looked up and checked
  (pinned on the clock), in order, instead of urllib3 looking the host up
  again: one lookup per hop, bounded, and no second answer to rebind.
* With a `peer_check`, the connected socket's peer is checked before the TLS
  handshake and the request, so not a byte reaches a refused peer.
"""
from __future__ import annotations

import socket
from typing import Callable

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError

from pipeline.media.fetch_clock import fetch_expired, pinned_addresses, watch_socket


class _WatchedConnectionMixin:
    peer_check: Callable[[socket.socket], None] | None = None

    def _new_conn(self) -> socket.socket:
        # urllib3 opens the socket here, before the TLS handshake and the
        # request, so the check runs before any byte reaches the peer and the
        # clock can cut a handshake that drips.
        sock = self._connect_to_pinned()
        try:
            if self.peer_check is not None:
                self.peer_check(sock)
        except BaseException:
            sock.close()
            raise
        watch_socket(sock)
        return sock

    def _connect_to_pinned(self) -> socket.socket:
        """A socket to the addresses the fetch looked up and checked, in order; urllib3's own lookup if none."""
        addresses = pinned_addresses(self._dns_host, self.port)
        if not addresses:
            return super()._new_conn()
        name = self._dns_host
        unique = list(dict.fromkeys(addresses))
        for index, address in enumerate(unique):
            # Only for opening the socket: `host` (TLS name, Host header) reads _dns_host too.
            self._dns_host = address
            try:
                return super()._new_conn()
            except ConnectTimeoutError:  # NewConnectionError too: try the next address
                if index == len(unique) - 1 or fetch_expired():
                    raise
            finally:
                self._dns_host = name
        raise AssertionError("unreachable: the last address returns or raises")


class _WatchedPoolMixin:
    def _get_conn(self, timeout=None):
        # A connection reused from the pool is already open: watch its socket too.
        conn = super()._get_conn(timeout)
        watch_socket(getattr(conn, "sock", None))
        return conn


def watched_pool_classes(peer_check: Callable[[socket.socket], None] | None) -> dict[str, type]:
    """urllib3 pool classes by scheme, for PoolManager.pool_classes_by_scheme."""
    pools = {}
    for scheme, connection, pool in (("http", HTTPConnection, HTTPConnectionPool),
                                     ("https", HTTPSConnection, HTTPSConnectionPool)):
        connection_class = type(f"_Watched{connection.__name__}", (_WatchedConnectionMixin, connection),
                                {"peer_check": staticmethod(peer_check) if peer_check else None})
        pools[scheme] = type(f"_Watched{pool.__name__}", (_WatchedPoolMixin, pool),
                             {"ConnectionCls": connection_class})
    return pools
