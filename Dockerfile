FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    NIPYPE_NO_ET=1 \
    BIDS_QSM_CACHE=/tmp/bids_qsm-cache

WORKDIR /src
COPY . /src
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 1000 qsm
USER qsm
WORKDIR /home/qsm

ENTRYPOINT ["bids_qsm"]
