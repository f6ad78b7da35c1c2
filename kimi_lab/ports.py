"""A listening port checked before anything slow runs (``serve`` loads a model, ``dashboard``
starts Streamlit): a busy port is one line that names it and the option that changes it."""

from __future__ import annotations

import errno
import socket

from kimi_lab.errors import KimiLabError


def check_port_free(host: str, port: int, option: str = "--port", host_option: str = "--host") -> None:
    """Bind ``host:port`` the way the servers do (SO_REUSEADDR) and let go, or raise a one-line error."""
    if not 0 <= port < 65536:
        raise KimiLabError(f"{option} {port}: a port is a number from 0 (any free one) to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exn:
        raise KimiLabError(
            f"{host_option} {host}: not an address this machine has ({exn.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exn:
            if exn.errno == errno.EADDRINUSE:
                why = "is already in use"
            elif exn.errno == errno.EACCES:
                why = "needs privileges (ports below 1024)"
            else:
                why = f"cannot be bound ({exn.strerror})"
            raise KimiLabError(f"port {port} on {host} {why}: choose another with {option} N") from None
