"""The local stack's subcommands of `tecaflow`: serve, stack, demo. Registering them imports
nothing heavy; the stack loads when one of them runs."""
from __future__ import annotations

import json
import time
from pathlib import Path

from stream.arguments import REPO_HELP, positive
from stream.config import Settings
from stream.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the embedded tritonserver on a model repository until Ctrl-C")
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--model-control", choices=("poll", "explicit"), default="poll")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stack", help="the embedded broker, Redis, Triton and Prometheus on loopback")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("demo", help="the whole system on the embedded stack with the dashboard, until Ctrl-C")
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--streams", type=positive(int), default=4)
    p.add_argument("--segments", type=positive(int), default=600, help="segments per stream in each round of the replay")
    p.add_argument("--rate", type=float, default=20.0, help="segments per second overall")
    p.add_argument("--dashboard-port", type=positive(int), default=8501)
    p.add_argument("--seconds", type=float, help="stop after this long (default: TECAFLOW_DEMO_SECONDS, 0: until Ctrl-C)")
    p.set_defaults(func=cmd_demo)


def cmd_serve(args) -> int:
    """Triton in the foreground, on the embedded stack's ports and run directory (so that `stack
    status` and `stack down` see it too)."""
    from stream.stack.embedded import Stack
    s = Settings.from_env()
    server = Stack(s, args.repo).triton()
    server.model_control = args.model_control
    if server.ready():
        raise UserError(f"a Triton is already serving on port {s.triton_http_port} (`tecaflow stack down` stops it)")
    server.start()
    print(f"Triton HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  (Ctrl-C stops)")
    try:
        while server.process.poll() is None:
            time.sleep(1)
        raise UserError(f"tritonserver exited with code {server.process.returncode}; see {s.run_dir}/triton.log")
    finally:
        server.stop()


def cmd_stack(args) -> int:
    from stream.stack.embedded import Stack
    stack = Stack(Settings.from_env(), args.repo)
    if args.action == "up":
        stack.up()
    elif args.action == "down":
        print("stopped:", ", ".join(stack.down()) or "nothing was running")
        return 0
    status = stack.status()
    print(json.dumps(status, indent=2))
    return 0 if all(s["healthy"] for s in status.values()) else 1


def cmd_demo(args) -> int:
    from stream.stack.demo import run_demo
    s = Settings.from_env()
    seconds = s.demo_seconds if args.seconds is None else args.seconds
    return run_demo(s, args.repo or Path(s.model_repo), args.streams, args.segments, args.rate, seconds,
                    args.dashboard_port)
