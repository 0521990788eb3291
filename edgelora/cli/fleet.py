"""`edgelora fleet link|node|run|personalize`: federated Skip2-LoRA over Flower (needs edgelora[fleet])."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common, flags

EXAMPLE = """
edgelora fleet link --port 9091 --home fleet_home                  # the server's endpoint (SuperLink), loopback
edgelora fleet node har_bundle --data dev1.npz --workdir dev1 --superlink 127.0.0.1:9091   # one per device
edgelora fleet run har_bundle --out fleet_adapter --superlink 127.0.0.1:9091 --home fleet_home --rounds 20 --min-clients 3
edgelora fleet personalize store me --bundle har_bundle --shared fleet_adapter --data mine.npz
edgelora fleet certs creds --names server.example --nodes 3        # off loopback: TLS + keys (docs/security.md)
edgelora fleet link --host 0.0.0.0 --certs creds
edgelora fleet register creds/nodes/dev0.pub --superlink server.example:9091 --certs creds
edgelora fleet node har_bundle --data dev0.npz --workdir dev0 --superlink server.example:9091 --root-certificates ca.pem --auth-supernode-private-key dev0.key
"""
ACTIONS = ("link", "node", "run", "personalize", "certs", "register")


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "fleet", run, report,
        description="A fleet trains one shared adapter without raw data leaving any device, on Flower's "
                    "deployment runtime. link: start the SuperLink (the server's endpoint). node: start one "
                    "device (a SuperNode) with its bundle, labelled samples and a work folder (its adapter store "
                    "and Skip-Cache). run: submit the rounds; every device fine-tunes from the shared adapter on "
                    "its own samples and sends its update (local - shared, float16: a few kB); the server "
                    "rejects malformed updates, averages the rest weighted by samples (fedavg, or fedavgm: with "
                    "server momentum) and saves the shared adapter to --out after every round, with the round "
                    "log in OUT.rounds.json. A device lost mid-round is left out of that round after "
                    "--round-timeout; a restarted device serves the last shared adapter it received and trains "
                    "from the latest one. personalize: train a personal adapter on top of the shared one through "
                    "an adapter store's holdout gate. Needs Flower: from the edgelora clone, "
                    "pip install -e '.[fleet]'.",
        example=EXAMPLE)
    p.add_argument("action", choices=ACTIONS, help="what to do")
    p.add_argument("target", nargs="?", type=Path, default=None, metavar="BUNDLE|STORE|DIR|KEY",
                   help="node, run: the backbone bundle; personalize: the adapter store; certs: the new folder "
                        "of credentials; register: a SuperNode's public key (.pub)")
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="personalize: the personal adapter's name")
    n = p.add_argument_group("network (link, node, run)")
    n.add_argument("--host", default="127.0.0.1", help="link: address to listen on (default 127.0.0.1)")
    n.add_argument("--port", type=flags.positive_int, default=None, help="link: port (default 9091); node: its "
                   "local runtime port (default 9094; one per device on a machine)")
    n.add_argument("--superlink", default="127.0.0.1:9091", metavar="HOST:PORT",
                   help="node, run: the SuperLink's address (default 127.0.0.1:9091)")
    n.add_argument("--home", type=Path, default=None, metavar="DIR",
                   help="Flower's private folder (FLWR_HOME; default a temporary one)")
    _security_flags(p.add_argument_group("security (off loopback; docs/security.md)"))
    _device_flags(p.add_argument_group("device (node, personalize)"))
    _round_flags(p.add_argument_group("rounds (run)"))


def _security_flags(s) -> None:
    s.add_argument("--certs", type=Path, default=None, metavar="DIR", help="link, run, register: take every "
                   "credential below from a folder `fleet certs` wrote (link: all; run, register: ca.pem, operator.token)")
    s.add_argument("--ssl-ca-certfile", default=None, metavar="PEM", help="link: the CA certificate")
    s.add_argument("--ssl-certfile", default=None, metavar="PEM", help="link: the SuperLink's TLS certificate")
    s.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="link: its private key")
    s.add_argument("--enable-supernode-auth", action="store_true",
                   help="link: only SuperNodes whose public key the operator registered may join")
    s.add_argument("--operator-token", default=None, metavar="FILE",
                   help="link: only Control API calls bearing this token are served (runs, registrations); "
                        "run, register: the token to send")
    s.add_argument("--root-certificates", default=None, metavar="PEM",
                   help="node, run, register: the CA certificate the SuperLink's certificate must chain to")
    s.add_argument("--auth-supernode-private-key", default=None, metavar="KEY", help="node: its SuperNode key")
    s.add_argument("--insecure", action="store_true", help="link, node, run, register: no TLS, no authentication "
                   "(refused off loopback without this flag; prints a warning)")
    s.add_argument("--names", nargs="+", default=["localhost"], metavar="NAME",
                   help="certs: the SuperLink's host names or addresses (default localhost)")
    s.add_argument("--nodes", type=flags.positive_int, default=1, metavar="N", help="certs: key pairs dev0.. (default 1)")


def _device_flags(d) -> None:
    d.add_argument("--data", type=Path, default=None, metavar="FILE", help="labelled samples (.npz or .csv)")
    d.add_argument("--x-key", default="x", metavar="KEY", help="inputs in a .npz (default x)")
    d.add_argument("--y-key", default="y", metavar="KEY", help="labels in a .npz (default y)")
    d.add_argument("--workdir", type=Path, default=None, metavar="DIR", help="node: its store and cache (kept)")
    d.add_argument("--max-wait", type=flags.positive_float, default=600.0, metavar="S",
                   help="node: exit after this many seconds without the SuperLink (default 600)")
    d.add_argument("--max-shared-norm", type=flags.positive_float, default=1e3, metavar="X",
                   help="node: refuse a shared adapter with a larger L2 norm (default 1000)")
    d.add_argument("--bundle", type=Path, default=None, help="personalize: the backbone bundle")
    d.add_argument("--shared", type=Path, default=None, metavar="DIR", help="personalize: the shared adapter")


def _round_flags(r) -> None:
    r.add_argument("--out", type=Path, default=None, metavar="DIR", help="the shared adapter's folder")
    r.add_argument("--rounds", type=flags.positive_int, default=10, help="default 10")
    r.add_argument("--min-clients", type=flags.positive_int, default=2,
                   help="devices needed to start a round and valid updates to change the adapter (default 2)")
    r.add_argument("--strategy", choices=("fedavg", "fedavgm"), default="fedavg", help="default fedavg")
    r.add_argument("--aggregation", choices=("mean", "median", "trimmed", "fedavg"), default="mean",
                   help="robust rule over the round's updates, after capping each device's weight and clipping "
                        "update norms at 3x the round's median (default mean; fedavg: unbounded)")
    r.add_argument("--rank", type=flags.positive_int, default=4, help="adapter rank (default 4)")
    r.add_argument("--local-epochs", type=flags.positive_int, default=2, help="per device and round (default 2)")
    r.add_argument("--round-timeout", type=flags.positive_float, default=120.0, metavar="S",
                   help="wait this long for replies; later ones are dropped (default 120)")
    r.add_argument("--update-dtype", choices=("float16", "float32"), default="float16", help="default float16")
    r.add_argument("--evaluate", action="store_true",
                   help="devices report each round's shared adapter's loss on their own validation split; "
                        "--out keeps the round with the lowest loss")
    r.add_argument("--init", type=Path, default=None, metavar="DIR",
                   help="start from this adapter: its shape, and its recorded weight decay on every device")
    r.add_argument("--timeout", type=flags.positive_float, default=3600.0, metavar="S",
                   help="stop waiting for the whole run after this many seconds (default 3600)")


def _need(args, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" if n not in ("target", "name") else n.upper() for n in names
               if getattr(args, n) is None]
    if missing:
        raise ValueError(f"`edgelora fleet {args.action}` needs {', '.join(missing)}")


def run(args: argparse.Namespace) -> dict:
    try:
        from ..fleet import deploy
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ValueError(f"the fleet needs Flower: from the edgelora clone, pip install -e '.[fleet]' ({e})") from None
    if args.action == "personalize":
        return _personalize(args)
    if args.action == "certs":
        _need(args, "target")
        from ..fleet.certs import make_credentials
        made = make_credentials(args.target, args.names, [f"dev{i}" for i in range(args.nodes)])
        return {"action": "certs", "folder": str(args.target), "files": made}
    if args.home is not None:
        return _serve(args, deploy, args.home)
    with tempfile.TemporaryDirectory(prefix="edgelora-fleet-") as home:
        return _serve(args, deploy, Path(home))


def _credentials(args: argparse.Namespace) -> dict[str, object]:
    """The security flags of this action (NEEDS), filled from --certs DIR where not given explicitly."""
    from ..fleet.exposure import NEEDS
    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in NEEDS[args.action]}
    if args.certs is not None:
        folder = {"--ssl-ca-certfile": "ca.pem", "--ssl-certfile": "server.pem", "--ssl-keyfile": "server.key",
                  "--operator-token": "operator.token", "--root-certificates": "ca.pem"}
        for flag, name in folder.items():
            if flag in given and not given[flag]:
                if not (args.certs / name).is_file():
                    raise FileNotFoundError(f"--certs {args.certs}: expected {name} in it (edgelora fleet certs DIR)")
                given[flag] = str(args.certs / name)
        if "--enable-supernode-auth" in given:
            given["--enable-supernode-auth"] = True
    return given


def _serve(args: argparse.Namespace, deploy, home: Path) -> dict:
    from ..fleet.exposure import check_exposure
    host, _, port = (args.superlink if args.action != "link" else f"{args.host}:{args.port or 9091}").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--superlink: expected HOST:PORT, found {args.superlink!r}")
    sec = _credentials(args)
    warning = check_exposure(args.action, host, sec, args.insecure)
    if warning:
        print(warning, file=sys.stderr)
    env = deploy.flwr_env(home, host, int(port), sec.get("--root-certificates"))
    if sec.get("--operator-token") and args.action != "link":
        from ..fleet.certs import read_token
        from ..fleet.guard import operator_login
        operator_login(home, f"{host}:{port}", read_token(Path(sec["--operator-token"])))
    if args.action == "link":
        tls = (sec["--ssl-ca-certfile"], sec["--ssl-certfile"], sec["--ssl-keyfile"]) if sec["--ssl-certfile"] else None
        return _foreground(deploy.superlink_command(args.host, args.port or 9091, tls, sec["--enable-supernode-auth"],
                                                    sec["--operator-token"]), env, "link")
    if args.action == "register":
        return _register(args, deploy, env)
    if args.action == "node":
        return _node(args, deploy, env, sec)
    return _rounds(args, deploy, env, home)


def _register(args: argparse.Namespace, deploy, env: dict) -> dict:
    _need(args, "target")
    done = subprocess.run(deploy.register_command(args.target), env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"flwr supernode register failed (exit {done.returncode}): "
                           f"{' '.join((done.stdout + done.stderr).split()[-40:])}")
    return {"action": "register", "key": str(args.target), "output": done.stdout.strip().splitlines()[-1:]}


def _node(args: argparse.Namespace, deploy, env: dict, sec: dict) -> dict:
    _need(args, "target", "data", "workdir")
    from ..fleet.device import FleetDevice   # check bundle, data and workdir now, not at the first round
    FleetDevice.from_files(args.target, args.data, args.workdir, args.x_key, args.y_key, args.threads,
                           args.max_shared_norm)
    cfg = deploy.write_node_config(args.workdir / "node_config.toml", str(args.target), str(args.data),
                                   str(args.workdir), args.x_key, args.y_key, args.max_shared_norm)
    return _foreground(deploy.supernode_command(args.superlink, args.port or 9094, cfg, args.max_wait,
                                                root_certificates=sec["--root-certificates"],
                                                private_key=sec["--auth-supernode-private-key"]), env, "node")


def _rounds(args: argparse.Namespace, deploy, env: dict, home: Path) -> dict:
    _need(args, "target", "out")
    from ..fleet.device import RoundSettings
    from ..fleet.settings import FleetSettings, check_out, rounds_path
    check_out(args.out.resolve())
    settings = FleetSettings(bundle=str(args.target.resolve()), out=str(args.out.resolve()), num_rounds=args.rounds,
                             min_clients=args.min_clients, strategy=args.strategy, rank=args.rank,
                             round_timeout=args.round_timeout, init=str(args.init.resolve()) if args.init else "",
                             evaluate=args.evaluate, aggregation=args.aggregation,
                             round=RoundSettings(local_epochs=args.local_epochs, update_dtype=args.update_dtype))
    app = deploy.write_app(home / "app", settings)
    start = time.monotonic()
    done = subprocess.run(deploy.run_command(app), env=env, timeout=args.timeout, capture_output=True, text=True)
    log_path = rounds_path(args.out.resolve())
    if done.returncode != 0 or not log_path.is_file():
        tail = " ".join((done.stderr or done.stdout).split()[-40:])
        raise RuntimeError(f"flwr run failed (exit {done.returncode}): {tail}")
    log = json.loads(log_path.read_text())
    return {"action": "run", "out": str(args.out), "rounds": log["rounds"], "seconds": time.monotonic() - start,
            "log": str(log_path)}


def _foreground(command: list[str], env: dict, what: str) -> dict:
    """Run a Flower server process until it ends; Ctrl-C or SIGTERM ends it too (processes.supervise)."""
    from ..fleet.processes import supervise
    return {"action": what, "exit_code": supervise(command, env)}


def _personalize(args: argparse.Namespace) -> dict:
    _need(args, "target", "name", "bundle", "shared", "data")
    from ..files.adapter import load_adapter
    from ..runtime.backbone import Backbone
    from ..fleet.personal import personalize_on_shared
    from ..ops.store import AdapterStore
    backbone = Backbone(args.bundle, threads=args.threads)
    args.label_column = "-1"
    inputs, targets = common.load_data(args, backbone.manifest, labels=True)
    shared = load_adapter(args.shared, backbone.manifest)
    result = personalize_on_shared(AdapterStore(args.target), args.name, backbone, shared, inputs, targets)
    return {"action": "personalize", **result.to_dict()}


def report(r: dict) -> str:
    if r["action"] == "certs":
        return (f"fleet credentials in {r['folder']}: " + ", ".join(Path(v).name for v in r["files"].values()) +
                "\n  private (mode 0600): ca.key, server.key, operator.token, nodes/*.key; see docs/security.md")
    if r["action"] == "register":
        return f"registered {r['key']}: {' '.join(r['output'])}"
    if r["action"] in ("link", "node"):
        return f"fleet {r['action']} exited with code {r['exit_code']}"
    if r["action"] == "personalize":
        return f"{r['name']}: {r['decision'].upper()} - {r['reason']} (serving v{r['current']})"
    lines = [f"fleet run: {len(r['rounds'])} rounds in {r['seconds']:.1f} s; shared adapter in {r['out']}",
             "  round  devices  rejected  seconds  bytes sent per device"]
    for x in r["rounds"]:
        lines.append(f"  {x['round']:5d}  {x['accepted']:7d}  {len(x['rejected']):8d}  {x['seconds']:7.1f}  "
                     f"{max(x['reply_bytes'] or [0]):7d}")
        lines += [f"         rejected node {y['node']}: {y['reason']}" for y in x["rejected"]]
    return "\n".join(lines + [f"  log: {r['log']}"])
