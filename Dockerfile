# bids_qsm as a BIDS App image, built from the same `pip install .` the tests cover.
#
#   docker build -t bids_qsm .
#   docker run --rm --read-only --tmpfs /tmp -v /data/bids:/data:ro -v /data/out:/out \
#       bids_qsm /data /out participant --participant-label 01
#
# It runs as an unprivileged user and writes nothing outside the bind-mounted output, the work
# directory (-w, default under /tmp) and /tmp, so a read-only root file system works; under
# Singularity/Apptainer /tmp is the host's, or bind a scratch folder there (docs/hpc.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md /src/
COPY bids_qsm /src/bids_qsm
RUN pip install /src && rm -rf /src

# Every cache our dependencies keep goes under /tmp, never to $HOME or site-packages: numba's
# compiled kernels, matplotlib's font cache, TemplateFlow's (empty) home, the BIDS validator's
# Deno cache. Nipype must not phone home, and its batch plugins need LOGNAME.
ENV BIDS_QSM_CACHE=/tmp/bids_qsm-cache \
    NUMBA_CACHE_DIR=/tmp/bids_qsm-cache/numba \
    MPLCONFIGDIR=/tmp/bids_qsm-cache/matplotlib \
    XDG_CACHE_HOME=/tmp/bids_qsm-cache/xdg \
    DENO_DIR=/tmp/bids_qsm-cache/deno \
    MPLBACKEND=Agg \
    NIPYPE_NO_ET=1 \
    LOGNAME=bids_qsm \
    HOME=/tmp

RUN useradd --no-create-home --home-dir /tmp --uid 1000 bids_qsm \
    && bids_qsm --version
USER bids_qsm
WORKDIR /tmp

ENTRYPOINT ["bids_qsm"]
