"""Who may use which of the SuperLink's APIs: the operator alone submits runs.

flwr 1.42 serves its Fleet, Control and Runtime APIs on one HTTP port, and without Flower's enterprise
account authentication its Control API serves anyone who reaches that port: whoever can connect can
submit a run, i.e. have the SuperLink start their ServerApp and every SuperNode their ClientApp. So
`edgelora fleet link` starts Flower's own SuperLink (`flower-superlink`, same flags) with one more ASGI
middleware in front of its routes, through Flower's SuperLink extension hook
(`flwr.superlink.extensions.get_middleware`):

    /v1/fleet/..., /health    open: SuperNodes (authenticated by Flower when --enable-supernode-auth)
    /v1/control/...           only with `Authorization: Bearer <operator token>`
    anything else             (the Runtime API of the ServerApp and Flower's helpers) only from this
                              machine: a client address that is loopback or the server's own address

The flwr CLI sends that header from its credential store (FLWR_HOME/credentials.yaml), where
`operator_login` puts the token for one SuperLink address (Flower's CLI treats it as an account token).

    python -m edgelora.fleet.guard --operator-token FILE <flower-superlink flags>
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import sys
from pathlib import Path

from .certs import read_token

FLEET, HEALTH, CONTROL = "/v1/fleet/", "/health", "/v1/control/"


def _is_local(client: str | None, server: str | None) -> bool:
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client).is_loopback or client == server
    except ValueError:
        return False


def decide(path: str, headers: dict[bytes, bytes], client: str | None, server: str | None, token: str) -> str | None:
    """Why a request must be refused, or None."""
    if path.startswith(FLEET) or path == HEALTH or path.startswith(HEALTH + "/"):
        return None
    if path.startswith(CONTROL):
        sent = headers.get(b"authorization", b"").decode("latin-1")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return None
        return ("the Control API (submitting a run, registering a SuperNode) needs the operator's token: "
                "edgelora fleet run/register --operator-token FILE")
    return None if _is_local(client, server) else "this API is served to this machine only"


class OperatorGuard:
    """ASGI middleware refusing (HTTP 403, with the reason) what `decide` refuses."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or (None,))[0]
        server = (scope.get("server") or (None,))[0]
        reason = decide(scope.get("path", ""), dict(scope.get("headers") or []), client, server, self.token)
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"detail": reason}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def operator_login(home: Path, address: str, token: str) -> None:
    """Put the operator token in the credential store of the Flower home `home` for SuperLink `address`."""
    from flwr.cli.constant import ACCESS_TOKEN_STORE_KEY, AUTHN_TYPE_STORE_KEY, REFRESH_TOKEN_STORE_KEY
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore
    store = FileCredentialStore(Path(home) / "credentials.yaml")
    store.set(AUTHN_TYPE_STORE_KEY % address, AuthnType.OIDC.encode())   # the CLI plugin that sends a bearer token
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode())
    store.set(REFRESH_TOKEN_STORE_KEY % address, b"none")   # never used: the guard answers 403, not 401
    (Path(home) / "credentials.yaml").chmod(0o600)


def main(argv: list[str] | None = None) -> None:
    """Flower's SuperLink with the guard: `--operator-token FILE` then flower-superlink's own flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--operator-token" not in argv or argv.index("--operator-token") + 1 >= len(argv):
        sys.exit("edgelora.fleet.guard: expected --operator-token FILE before flower-superlink's flags")
    i = argv.index("--operator-token")
    token = read_token(Path(argv[i + 1]))
    rest = argv[:i] + argv[i + 2:]
    from starlette.middleware import Middleware
    from flwr.superlink import extensions
    from flwr.superlink.cli.flower_superlink import flower_superlink
    flower = extensions.get_middleware
    extensions.get_middleware = lambda: (Middleware(OperatorGuard, token=token), *flower())   # outermost
    sys.argv = ["flower-superlink", *rest]
    flower_superlink()


if __name__ == "__main__":
    main()
