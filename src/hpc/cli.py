"""The ``hpc-gateway`` command."""

from __future__ import annotations

import argparse
import sys

from hpc.security import hash_token, new_token


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from hpc.api.run import main as serve

        return serve(argv[1:])
    parser = argparse.ArgumentParser(prog="hpc-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (see 'hpc-gateway serve --help')")
    token = sub.add_parser("token", help="make a new API token and the hash to configure")
    token.add_argument("name")
    token.add_argument("--role", choices=("admin", "user"), default="user")
    args = parser.parse_args(argv)
    if args.command == "token":
        secret = new_token()
        print(f"token: {secret}")
        print(f"configure: {{name: {args.name}, role: {args.role}, hash: '{hash_token(secret)}'}}")
        print(f"or in the environment: HPC_TOKENS={args.name}:{args.role}:{hash_token(secret)}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
