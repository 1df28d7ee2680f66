"""Runs the gateway: the API under uvicorn plus the background workers, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import logging
import sys

import uvicorn

from hpc.api.app import create_app, served_app
from hpc.config import ConfigError, load_config
from hpc.services import metrics


def limit_malloc_arenas(count: int = 2) -> None:
    """Caps glibc's malloc arenas (default: 8 per core) unless MALLOC_ARENA_MAX says otherwise.

    Every transfer runs several threads (fetcher, sender, keeper, S3 part uploaders); each new thread
    may get its own arena, and freed buffers stay in it. Measured with bench/e2e.py, two rounds of 1 GiB
    transfers: RSS growth over idle 55 then 103 MiB with the default, 46 then 54 MiB with 2 arenas, at the
    same throughput.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(-8, count)  # M_ARENA_MAX from malloc.h


LOG_MESSAGE_LIMIT = 4096


class BoundedMessages(logging.Filter):
    """Cuts a log message longer than :data:`LOG_MESSAGE_LIMIT` characters: whatever a library puts in
    a message, a request value never lands in the log whole (one 50 MB line per request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > LOG_MESSAGE_LIMIT:
            record.msg = f"{message[:LOG_MESSAGE_LIMIT]}... ({len(message)} characters, cut)"
            record.args = None
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(BoundedMessages())
    # paramiko logs every channel open at INFO; its own debug output could include banners, not secrets.
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    # Connexion logs every parameter check at DEBUG, and request values (whole, secrets included) at
    # INFO; the gateway words and answers every request error itself (hpc.api.validation, problems).
    logging.getLogger("connexion").setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpc-gateway serve", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $HPC_CONFIG)")
    parser.add_argument("--host", help="listen address (overrides the configuration)")
    parser.add_argument("--port", type=int, help="listen port (overrides the configuration)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"hpc-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.host:
        config = config.replace(listen_host=args.host)
    if args.port:
        config = config.replace(listen_port=args.port)
    configure_logging(config.log_level)
    limit_malloc_arenas()
    app = create_app(config)
    # The app's start-up objects (spec, routes, models: about 10^5) live as long as the process. Frozen,
    # they are left out of full collections, which otherwise walk them all (95 ms measured here).
    gc.collect()
    gc.freeze()
    app.gateway.start()
    if config.metrics_listen_port:
        metrics.serve(config.metrics_listen_host, config.metrics_listen_port)
    try:
        uvicorn.run(served_app(app), host=config.listen_host, port=config.listen_port, log_level=config.log_level.lower(),
                    access_log=False, lifespan="off",
                    # Event streams (GET /events) never end by themselves: a shutdown cuts them after this.
                    timeout_graceful_shutdown=5)
    finally:
        app.gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
