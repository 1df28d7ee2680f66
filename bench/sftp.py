"""SFTP upload and download of one file through the gateway's SSH layer vs OpenSSH ``sftp``.

Same file, same key, same sshd (the testbed's, 127.0.0.1:2222), same run. The gateway side is what a
transfer uses: :class:`hpc.ssh.files.ClusterFiles` with each data engine (``openssh``: SFTP spoken by the
gateway to an ``ssh`` process; ``paramiko``: SFTP over a paramiko channel), 255 KiB requests, many in
flight. References: OpenSSH ``sftp -b`` with its defaults and with ``-c aes128-gcm@openssh.com -B 261120
-R 64`` (the best OpenSSH settings measured here); the ratio is against the faster of the two.

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
from hpc.ssh import ClusterFiles, SSHConnection, SSHTarget

CHUNK = 4 * 1024 * 1024
OPENSSH_BEST = ("-c", "aes128-gcm@openssh.com", "-B", "261120", "-R", "64")


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


def openssh_seconds(bed, batch: str, *options: str) -> float:
    """Seconds of an OpenSSH sftp batch, its ~0.25 s handshake (measured alone just before) taken off."""
    with Timer() as handshake:
        openssh(bed, "pwd\n", *options)
    with Timer() as timer:
        openssh(bed, batch, *options)
    return max(timer.seconds - handshake.seconds, 1e-6)


def gateway_put(files: ClusterFiles, local: Path, remote: str) -> None:
    writer = files.open_writer(remote, 0, create=True, dedicated=True)
    with open(local, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            writer.write(chunk)
    writer.close()


def gateway_get(files: ClusterFiles, remote: str, local: Path, size: int) -> None:
    with open(local, "wb") as handle:
        for piece in files.read(remote, 0, size, dedicated=True):
            handle.write(piece)


def target_of(bed) -> SSHTarget:
    return SSHTarget(host="127.0.0.1", port=int(bed["TESTBED_SSH_PORT"]), username=bed["TESTBED_SSH_USER"],
                     key_path=bed["TESTBED_SSH_KEY"], known_hosts=bed["TESTBED_KNOWN_HOSTS"])


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
    connection = SSHConnection(target_of(bed))
    connection.connect()
    home = connection.run('printf %s "$HOME"').stdout
    engines = {name: ClusterFiles(connection, name) for name in ("openssh", "paramiko")}
    mb = size / 1e6
    results: dict[str, list[float]] = {}

    def timed(name: str, action) -> None:
        with Timer() as timer:
            action()
        results.setdefault(name, []).append(mb / timer.seconds)

    try:
        for _ in range(rounds):
            for name, options in (("openssh", ()), ("openssh-best", OPENSSH_BEST)):
                results.setdefault(f"{name} put", []).append(mb / openssh_seconds(bed, f"put {local} {remote}\n",
                                                                                   *options))
                results.setdefault(f"{name} get", []).append(mb / openssh_seconds(bed, f"get {remote} {back}\n",
                                                                                   *options))
            for name, files in engines.items():
                timed(f"{name} engine put", lambda: gateway_put(files, local, f"{home}/{remote}"))  # noqa: B023 (called in this iteration)
                timed(f"{name} engine get", lambda: gateway_get(files, f"{home}/{remote}", back, size))  # noqa: B023 (called in this iteration)
                with open(back, "rb") as handle:
                    if hashlib.file_digest(handle, "sha256").hexdigest() != expected:
                        sys.exit(f"the {name} engine's round trip changed the data")
    finally:
        connection.run(f"rm -f {remote}")
        for files in engines.values():
            files.close()
        connection.close()
        for path in (local, back):
            path.unlink(missing_ok=True)
        work.rmdir()

    def median(name: str) -> float:
        values = sorted(results[name])
        return values[len(values) // 2]

    print(f"# SFTP, {size // 2**20} MiB, {rounds} round(s); same file, key and sshd; reference: the faster "
          "OpenSSH sftp of the two settings")
    for direction in ("put", "get"):
        reference = max(median(f"openssh {direction}"), median(f"openssh-best {direction}"))
        print(row(f"OpenSSH sftp {direction} (defaults)", results[f"openssh {direction}"], "MB/s"))
        print(row(f"OpenSSH sftp {direction} aes128-gcm -B 261120 -R 64", results[f"openssh-best {direction}"],
                  "MB/s"))
        for name in engines:
            print(row(f"gateway SSH layer {direction}, {name} engine", results[f"{name} engine {direction}"], "MB/s",
                      reference, "best OpenSSH sftp"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
