"""The SSH data paths that were candidates for the gateway, measured in one run on the same 1 GiB file.

- openssh engine: SFTP spoken by the gateway (hpc.ssh.sftp) to an ``ssh`` process (what it uses by default);
- paramiko engine: the same SFTP client over a paramiko channel (the gateway process does the crypto);
- 2 openssh sessions: the file in two halves over two ``ssh`` processes at once (process parallelism);
- asyncssh: its own SFTP client (aes128-gcm, 255 KiB requests), run with the interpreter given by
  ``--asyncssh-python`` (asyncssh 2.24 needs a newer ``cryptography`` than the gateway pins, so it lives in
  a venv of its own: ``python3 -m venv /tmp/av && /tmp/av/bin/pip install asyncssh==2.24.1``);
- OpenSSH ``sftp -c aes128-gcm@openssh.com -B 261120 -R 64``: the reference (ratio 1.0).

    .venv/bin/python bench/alternatives.py [--size-mib 1024] [--rounds 3] [--asyncssh-python /tmp/av/bin/python]
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common import Timer, arguments, row, testbed
from sftp import OPENSSH_BEST, gateway_get, gateway_put, make_file, openssh_seconds, target_of

from hpc.ssh import ClusterFiles, SSHConnection

ASYNCSSH = """
import asyncio, sys, time
import asyncssh
host, port, user, key, known, local, remote, back = sys.argv[1:]
async def main():
    async with asyncssh.connect(host, port=int(port), username=user, client_keys=[key], known_hosts=known,
                                encryption_algs=["aes128-gcm@openssh.com"]) as conn:
        async with conn.start_sftp_client() as sftp:
            t = time.perf_counter(); await sftp.put(local, remote, block_size=261120); put = time.perf_counter() - t
            t = time.perf_counter(); await sftp.get(remote, back, block_size=261120); get = time.perf_counter() - t
    print(put, get)
asyncio.run(main())
"""


def parallel_put(files: ClusterFiles, local: Path, remote: str, size: int, streams: int) -> None:
    """The file in ``streams`` disjoint ranges, each over a dedicated session (an ssh process each)."""
    files.write_file(remote, b"")
    share = -(-size // streams)
    errors: list[BaseException] = []

    def send(start: int) -> None:
        try:
            writer = files.open_writer(remote, start, dedicated=True)
            with open(local, "rb", buffering=0) as handle:
                writer.write_from(handle.fileno(), start, min(share, size - start))
            writer.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(start,)) for start in range(0, size, share)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--asyncssh-python", help="an interpreter with asyncssh installed (skipped without)")
    args = parser.parse_args()
    size = (8 if args.smoke else args.size_mib) * 1024 * 1024
    rounds = 1 if args.smoke else args.rounds
    bed = testbed()
    work = Path(tempfile.mkdtemp(prefix="hpc-bench-alt-", dir="/var/tmp"))
    local, back = work / "data.bin", work / "back.bin"
    expected = make_file(local, size)
    connection = SSHConnection(target_of(bed))
    home = connection.run('printf %s "$HOME"').stdout
    remote = f"{home}/bench-alt-{os.getpid()}.bin"
    engines = {name: ClusterFiles(connection, name) for name in ("openssh", "paramiko")}
    mb = size / 1e6
    results: dict[str, list[float]] = {}

    def timed(name: str, action) -> None:
        with Timer() as timer:
            action()
        results.setdefault(name, []).append(mb / timer.seconds)

    try:
        for _ in range(rounds):
            for direction in ("put", "get"):
                batch = f"put {local} {remote}\n" if direction == "put" else f"get {remote} {back}\n"
                results.setdefault(f"OpenSSH sftp {direction}", []).append(
                    mb / openssh_seconds(bed, batch, *OPENSSH_BEST))
            for name, files in engines.items():
                timed(f"{name} engine put", lambda: gateway_put(files, local, remote))
                timed(f"{name} engine get", lambda: gateway_get(files, remote, back, size))
            timed("2 openssh sessions put", lambda: parallel_put(engines["openssh"], local, remote, size, 2))
            if args.asyncssh_python:
                out = subprocess.run([args.asyncssh_python, "-c", ASYNCSSH, "127.0.0.1", bed["TESTBED_SSH_PORT"],
                                      bed["TESTBED_SSH_USER"], bed["TESTBED_SSH_KEY"], bed["TESTBED_KNOWN_HOSTS"],
                                      str(local), remote, str(back)], check=True, capture_output=True, text=True)
                put, get = map(float, out.stdout.split())
                results.setdefault("asyncssh put", []).append(mb / put)
                results.setdefault("asyncssh get", []).append(mb / get)
            with open(back, "rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != expected:
                    sys.exit("a round trip changed the data")
    finally:
        connection.run(f"rm -f {remote}")
        for files in engines.values():
            files.close()
        connection.close()
        for path in (local, back):
            path.unlink(missing_ok=True)
        work.rmdir()
    print(f"# SSH data paths, {size // 2**20} MiB, {rounds} round(s); reference: OpenSSH sftp aes128-gcm -B 261120 "
          "-R 64, same run")
    for direction in ("put", "get"):
        reference = statistics.median(results[f"OpenSSH sftp {direction}"])
        print(row(f"OpenSSH sftp {direction} (reference)", results[f"OpenSSH sftp {direction}"], "MB/s"))
        names = ["openssh engine", "paramiko engine"] + (["2 openssh sessions"] if direction == "put" else [])
        names += ["asyncssh"] if args.asyncssh_python else []
        for name in names:
            print(row(f"{name} {direction}", results[f"{name} {direction}"], "MB/s", reference, "OpenSSH sftp"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
