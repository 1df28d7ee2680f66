#!/usr/bin/env bash
# Install the SERRANO stand-in and its sample inputs for user hpcuser on the test cluster.
# Idempotent, run as root (by the testbed's up.sh). Files are (re)installed only when they
# differ from this folder's copies, so re-running resets the testbed to a known state.
#   ~hpcuser/serrano/build/SERRANO                                   (755)
#   ~hpcuser/serrano/data/Init_Data/raw_data_input_fft/input.csv     <- sample_input.csv
#   ~hpcuser/serrano/data/Init_Data/raw_data_input_kmean/input.csv   <- sample_points.csv
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USER_NAME=hpcuser

log() { echo "[serrano] $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "[serrano] ERROR: must run as root" >&2
    exit 1
fi
if ! id "$USER_NAME" >/dev/null 2>&1; then
    log "user $USER_NAME does not exist yet; nothing installed"
    exit 0
fi

GROUP=$(id -gn "$USER_NAME")
HOME_DIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
ROOT="${HOME_DIR:-/home/$USER_NAME}/serrano"
INIT="$ROOT/data/Init_Data"

# Each level explicitly: `install -d` would leave intermediate directories owned by root.
for d in "$ROOT" "$ROOT/build" "$ROOT/data" "$INIT" "$INIT/raw_data_input_fft" "$INIT/raw_data_input_kmean"; do
    install -d -o "$USER_NAME" -g "$GROUP" -m 755 "$d"
done

put() {  # put SRC DST MODE: copy only when the content differs; always fix owner and mode
    if cmp -s "$1" "$2"; then
        chown "$USER_NAME:$GROUP" "$2"
        chmod "$3" "$2"
    else
        install -o "$USER_NAME" -g "$GROUP" -m "$3" "$1" "$2"
        log "installed $2"
    fi
}
put "$HERE/SERRANO" "$ROOT/build/SERRANO" 755
put "$HERE/sample_input.csv" "$INIT/raw_data_input_fft/input.csv" 644
put "$HERE/sample_points.csv" "$INIT/raw_data_input_kmean/input.csv" 644

if ! /usr/bin/python3 -c 'import numpy, scipy' >/dev/null 2>&1; then
    log "WARNING: /usr/bin/python3 lacks numpy/scipy (Debian python3-numpy python3-scipy); SERRANO will fail"
fi
log "ready: $ROOT/build/SERRANO"
