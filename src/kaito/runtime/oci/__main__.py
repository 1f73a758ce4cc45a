"""`python -m kaito.runtime.oci`: push an adapter (after its sentinel, if asked) or pull /data."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SENTINEL = "fine_tuning_completed.txt"  # the tuning runtime's completion marker (upstream's name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaito.runtime.oci")
    parser.add_argument("--docker-config", help="Docker config JSON with registry credentials")
    parser.add_argument(
        "--insecure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plain HTTP (default: only for loopback registries)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push-adapter", help="push a results directory as an adapter")
    push.add_argument("directory", type=Path)
    push.add_argument("reference")
    push.add_argument("--model-name", required=True, help="sh.kaito.model.name annotation")
    push.add_argument(
        "--wait",
        action="store_true",
        help=f"poll every second until {SENTINEL} exists (upstream's pusher sidecar)",
    )
    push.add_argument("--wait-timeout", type=float, default=0, help="seconds; 0 waits forever")
    pull = commands.add_parser("pull", help="extract an image's /data into a directory")
    pull.add_argument("reference")
    pull.add_argument("directory", type=Path)
    args = parser.parse_args(argv)

    from kaito.runtime.oci.adapter import AdapterError, push_adapter
    from kaito.runtime.oci.image import pull_image_data
    from kaito.runtime.oci.registry import RegistryError

    docker_config = Path(args.docker_config) if args.docker_config else None
    try:
        if args.command == "pull":
            pulled = pull_image_data(
                args.reference, args.directory, docker_config=docker_config, insecure=args.insecure
            )
            print(json.dumps({"reference": pulled.reference, "digest": pulled.digest}))
            return 0
        if args.wait:
            started = time.monotonic()
            while not (args.directory / SENTINEL).is_file():
                if args.wait_timeout and time.monotonic() - started > args.wait_timeout:
                    print(f"error: no {SENTINEL} in {args.directory}", file=sys.stderr)
                    return 1
                time.sleep(1)
        pushed = push_adapter(
            args.directory,
            args.reference,
            model_name=args.model_name,
            docker_config=docker_config,
            insecure=args.insecure,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (RegistryError, AdapterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"reference": pushed.reference, "digest": pushed.digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
