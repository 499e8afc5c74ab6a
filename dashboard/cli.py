"""The dashboard's subcommands of `tecaflow`: dashboard (the Streamlit launcher) and bench
dashboard. Registering them imports nothing heavy: Streamlit runs in the process `dashboard`
becomes."""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path

from stream.arguments import positive
from stream.config import Settings
from stream.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="the live Streamlit dashboard on the trend store (read only)")
    p.add_argument("--port", type=positive(int), default=8501)
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.set_defaults(func=cmd_dashboard)


def register_bench(bench_sub) -> None:
    p = bench_sub.add_parser("dashboard", help="the dashboard's data-load time with many streams (scratch Redis)")
    p.add_argument("--streams", type=positive(int), default=1000)
    p.add_argument("--segments", type=positive(int), default=120, help="segments per stream")
    p.add_argument("--repeats", type=positive(int), default=10, help="loads of each view")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_dashboard)


def dashboard_command(port: int, address: str) -> list[str]:
    """The `streamlit run` command line for the dashboard: headless, no telemetry."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port")
    app = Path(__file__).resolve().with_name("app.py")
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--theme.base", "light", "--client.toolbarMode", "viewer"]


def check_bindable(address: str, port: int) -> None:
    """A UserError unless a server can listen on address:port now. Streamlit finds out only
    after `tecaflow` has printed the URL, and says so in a traceback (an address that does not
    resolve) or in a line of its own with exit code 1 (a port in use)."""
    try:
        family, kind, proto, _, bound = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--address {address}: cannot resolve it ({e.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        # as Streamlit's server binds: a port held only by closed connections is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(bound)
        except OSError as e:
            raise UserError(f"cannot listen on {address}:{port} ({e.strerror}); "
                            f"{'choose another --port' if e.errno == errno.EADDRINUSE else 'check --address'}"
                            ) from None


def cmd_dashboard(args) -> int:
    import importlib.util
    Settings.from_env()  # a bad setting fails here in one line, not inside the page
    if importlib.util.find_spec("streamlit") is None:
        raise ModuleNotFoundError("No module named 'streamlit'", name="streamlit")
    command = dashboard_command(args.port, args.address)
    check_bindable(args.address, args.port)
    print(f"tecaflow dashboard on http://{args.address}:{args.port}  (Ctrl-C stops)", flush=True)
    os.execv(command[0], command)


def cmd_bench_dashboard(args) -> int:
    from dashboard.bench import bench_dashboard, format_report
    result = bench_dashboard(args.streams, args.segments, args.repeats, progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
