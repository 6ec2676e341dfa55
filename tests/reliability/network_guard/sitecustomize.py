"""Loaded by Python at start-up when this folder is on PYTHONPATH: no internet socket can be made.

Every attempt (a TCP/UDP socket, a name lookup, a connection) is written to the file named by
``MEDCNN_NETWORK_LOG`` and then fails as an unreachable network would. Local sockets
(``AF_UNIX``, ``socketpair``) stay allowed: they are not the network.
"""

import os
import socket
import traceback

_LOG = os.environ.get("MEDCNN_NETWORK_LOG", os.devnull)
_INTERNET = {socket.AF_INET, socket.AF_INET6}
_Socket = socket.socket


def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(what + "\n" + "".join(traceback.format_stack(limit=8)) + "\n")
    raise OSError(101, f"network is blocked in this test ({what})")


class _GuardedSocket(_Socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and (family == -1 or family in _INTERNET):
            _refuse(f"socket(family={family})")
        super().__init__(family, type, proto, fileno)


def _lookup(*args, **kwargs):
    _refuse(f"name lookup {args[:1]}")


def _connect(address, *args, **kwargs):
    _refuse(f"connection to {address}")


socket.socket = _GuardedSocket
socket.getaddrinfo = _lookup
socket.gethostbyname = _lookup
socket.gethostbyname_ex = _lookup
socket.create_connection = _connect
