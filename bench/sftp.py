"""SFTP upload and download of one file through the gateway's SSH layer vs OpenSSH ``sftp``.

Same file, same key, same sshd (the testbed's, 127.0.0.1:2222), same run. The gateway side is what a
transfer uses: an ``hpc.ssh.SSHConnection`` (aes128-gcm preferred) and the staging layer's pipelined
writer and reader (255 KiB requests, many in flight). References: OpenSSH ``sftp -b`` with its defaults
(the goal's reference, ratio >= 1.0) and, for the ceiling, ``sftp -c aes128-gcm@openssh.com -B 261120``.

    .venv/bin/python bench/sftp.py [--size-mib 1024] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Timer, arguments, row, testbed
from hpc.ssh import SSHConnection, SSHTarget
from hpc.staging.sftp import PipelinedWriter, read_range

CHUNK = 4 * 1024 * 1024


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = block[: min(CHUNK, left)]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def openssh(bed, batch: str, *options: str) -> None:
    subprocess.run(
        ["sftp", "-q", "-b", "-", "-P", bed["TESTBED_SSH_PORT"], "-i", bed["TESTBED_SSH_KEY"],
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={bed['TESTBED_KNOWN_HOSTS']}",
         *options, f"{bed['TESTBED_SSH_USER']}@127.0.0.1"],
        input=batch, text=True, check=True, capture_output=True,
    )


def gateway_put(connection: SSHConnection, local: Path, remote: str) -> None:
    sftp = connection.open_sftp()
    try:
        sftp.open(remote, "wb").close()
        writer = PipelinedWriter(sftp, remote, 0)
        with open(local, "rb", buffering=0) as handle:
            while chunk := handle.read(CHUNK):
                writer.write(chunk)
        writer.close()
    finally:
        sftp.close()


def gateway_get(connection: SSHConnection, remote: str, local: Path, size: int) -> None:
    sftp = connection.open_sftp()
    try:
        with open(local, "wb") as handle:
            for chunk in read_range(sftp, remote, 0, size):
                handle.write(chunk)
    finally:
        sftp.close()


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    size = (8 if args.smoke else args.size_mib) * 1024 * 1024
    rounds = 1 if args.smoke else args.rounds
    bed = testbed()
    work = Path(tempfile.mkdtemp(prefix="hpc-bench-sftp-", dir="/var/tmp"))
    local, back = work / "data.bin", work / "back.bin"
    remote = f"bench-sftp-{os.getpid()}.bin"
    expected = make_file(local, size)
    target = SSHTarget(host="127.0.0.1", port=int(bed["TESTBED_SSH_PORT"]), username=bed["TESTBED_SSH_USER"],
                       key_path=bed["TESTBED_SSH_KEY"], known_hosts=bed["TESTBED_KNOWN_HOSTS"])
    connection = SSHConnection(target)
    connection.connect()
    mb = size / 1e6
    results: dict[str, list[float]] = {}

    def timed(name: str, action) -> None:
        with Timer() as timer:
            action()
        results.setdefault(name, []).append(mb / timer.seconds)

    try:
        for _ in range(rounds):
            # OpenSSH's time includes its ~0.25 s handshake: measured alone and taken off.
            with Timer() as handshake:
                openssh(bed, "pwd\n")
            for name, options in (("openssh", ()), ("openssh-gcm", ("-c", "aes128-gcm@openssh.com", "-B", "261120"))):
                with Timer() as put:
                    openssh(bed, f"put {local} {remote}\n", *options)
                results.setdefault(f"{name} put", []).append(mb / max(put.seconds - handshake.seconds, 1e-6))
                with Timer() as get:
                    openssh(bed, f"get {remote} {back}\n", *options)
                results.setdefault(f"{name} get", []).append(mb / max(get.seconds - handshake.seconds, 1e-6))
            timed("gateway put", lambda: gateway_put(connection, local, remote))
            timed("gateway get", lambda: gateway_get(connection, remote, back, size))
            digest = hashlib.sha256(back.read_bytes()).hexdigest()
            if digest != expected:
                sys.exit("the gateway's round trip changed the data")
    finally:
        connection.run(f"rm -f {remote}")
        connection.close()
        for path in (local, back):
            path.unlink(missing_ok=True)
        work.rmdir()
    print(f"# SFTP, {size // 2**20} MiB, {rounds} round(s); reference: OpenSSH sftp defaults, same file/key/sshd")
    for direction in ("put", "get"):
        reference = sorted(results[f"openssh {direction}"])[len(results[f"openssh {direction}"]) // 2]
        print(row(f"OpenSSH sftp {direction} (defaults, reference)", results[f"openssh {direction}"], "MB/s"))
        print(row(f"OpenSSH sftp {direction} aes128-gcm -B 261120", results[f"openssh-gcm {direction}"], "MB/s",
                  reference, "sftp"))
        print(row(f"gateway SSH layer {direction}", results[f"gateway {direction}"], "MB/s", reference, "sftp"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
