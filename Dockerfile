# bids_qsm as a BIDS App image, built from the same `pip install .` the tests cover.
#
#   docker build -t bids_qsm .
#   docker run --rm --read-only --tmpfs /tmp -v /data/bids:/data:ro -v /data/out:/out \
#       bids_qsm /data /out participant --participant-label 01
#
# It runs as an unprivileged user and writes nothing outside the bind-mounted output, the work
# directory (-w, default under /tmp) and /tmp, so a read-only root file system works; under
# Singularity/Apptainer /tmp is the host's, or bind a scratch folder there (docs/hpc.md).
# Not built by the project's CI (no Docker engine there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md /src/
COPY bids_qsm /src/bids_qsm
RUN pip install /src && rm -rf /src

# Every cache our dependencies keep goes to a folder of the user under /tmp, never to $HOME or
# site-packages: numba's compiled kernels, matplotlib's fonts, TemplateFlow's (empty) home, the
# BIDS validator's Deno cache. Per user, because Apptainer shares the host's /tmp between users
# (and a numba cache folder someone else owns fails the import). A value the user passes in
# (docker -e, APPTAINERENV_*) wins. Nipype must not phone home; its batch plugins need LOGNAME.
ENV NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    LOGNAME=bids_qsm \
    HOME=/tmp

RUN useradd --no-create-home --home-dir /tmp --uid 1000 bids_qsm \
    && printf '%s\n' \
        '#!/bin/sh' \
        'cache=${BIDS_QSM_CACHE:-/tmp/bids_qsm-cache-$(id -u)}' \
        'export BIDS_QSM_CACHE="$cache" \' \
        '    NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$cache/numba}" \' \
        '    MPLCONFIGDIR="${MPLCONFIGDIR:-$cache/matplotlib}" \' \
        '    XDG_CACHE_HOME="${XDG_CACHE_HOME:-$cache/xdg}" \' \
        '    DENO_DIR="${DENO_DIR:-$cache/deno}"' \
        'exec bids_qsm "$@"' \
        > /usr/local/bin/bids_qsm-entrypoint \
    && chmod 755 /usr/local/bin/bids_qsm-entrypoint \
    && bids_qsm-entrypoint --version
USER bids_qsm
WORKDIR /tmp

ENTRYPOINT ["/usr/local/bin/bids_qsm-entrypoint"]
