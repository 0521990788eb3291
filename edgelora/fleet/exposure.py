"""Secure by default off loopback: which credentials a fleet process needs for the address it uses.

On 127.0.0.1 only this machine reaches the fleet, and Flower may run without TLS. On any other address
`fleet link` needs TLS, SuperNode authentication and the operator token, `fleet node` needs the CA
certificate and its SuperNode key, `fleet run` and `fleet register` the CA certificate and the operator
token; without them the command is refused with one line naming the flags, unless `--insecure` is given,
which prints a warning. Nothing here imports flwr.
"""
from __future__ import annotations

import ipaddress
import socket

NEEDS = {
    "link": ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--operator-token"),
    "node": ("--root-certificates", "--auth-supernode-private-key"),
    "run": ("--root-certificates", "--operator-token"),
    "register": ("--root-certificates", "--operator-token"),
}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them (localhost)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_exposure(action: str, host: str, given: dict[str, object], insecure: bool) -> str | None:
    """ValueError if `action` on `host` lacks credentials; a warning (to print) with --insecure; else None.

    `given` maps each flag of NEEDS[action] to its value (None or False: not given)."""
    missing = [flag for flag in NEEDS[action] if not given.get(flag)]
    if insecure:
        if any(given.get(flag) for flag in NEEDS[action]):
            raise ValueError(f"fleet {action}: --insecure cannot be combined with {', '.join(f for f in NEEDS[action] if given.get(f))}")
        return (f"WARNING: fleet {action} --insecure on {host}: no TLS, no SuperNode authentication, and the "
                f"Control API open to anyone who reaches the port (they can run their own code on the server and "
                f"every device); use it on a trusted network only")
    if missing and not is_loopback(host):
        raise ValueError(f"fleet {action}: {host} is not a loopback address; give {', '.join(missing)} "
                         f"(edgelora fleet certs DIR makes them; see docs/security.md), or --insecure")
    partial = [flag for flag in NEEDS[action][:3] if action == "link" and not given.get(flag)]
    if action == "link" and 0 < len(partial) < 3:
        raise ValueError(f"fleet link: TLS needs --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile; missing "
                         f"{', '.join(partial)}")
    if action == "link" and given.get("--enable-supernode-auth") and len(partial) == 3:
        raise ValueError("fleet link: --enable-supernode-auth needs TLS (--ssl-ca-certfile, --ssl-certfile, "
                         "--ssl-keyfile), as Flower requires")
    return None
