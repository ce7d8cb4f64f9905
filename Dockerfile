# flexprice-beam: one image for both jobs.
#  * `docker run` with no arguments runs examples/generate.yaml against
#    FLEXPRICE_API_HOST / FLEXPRICE_API_KEY (given at run time, never baked in) and serves
#    /metrics, /ping and /stats on 4195.
#  * Given to a portable runner as the SDK harness image (--sdk_container_image=…), the
#    runner starts it with the Beam boot flags (--id=… --provision_endpoint=…) and the
#    entrypoint hands those to Beam's /opt/apache/beam/boot.
# The tag must match the apache-beam pin and the launching Python's minor version: the
# launcher pickles DoFns that the workers in this image unpickle (tests/test_docker.py).
# Build with --build-arg BEAM_VERSION=$(cat BEAM_VERSION): the repo-root file is the one
# Beam version; the default below is kept equal to it (tests/test_beam_version.py).
ARG BEAM_VERSION=2.62.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONIOENCODING=utf-8 \
    LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/flexprice-beam

# Dependencies first (a layer that survives code edits); apache-beam is already in the image.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY setup.py README.md BEAM_VERSION ./
COPY flexprice_beam ./flexprice_beam
COPY examples ./examples
COPY docker/entrypoint.sh /usr/local/bin/flexprice-beam-entrypoint
RUN pip install --no-deps . \
    && chmod 0755 /usr/local/bin/flexprice-beam-entrypoint \
    && groupadd --system --gid 10001 flexprice \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/flexprice flexprice \
    && mkdir -p /data/dead-letter \
    && chown -R 10001:10001 /data

# Defaults only; the API key comes from the environment at run time (-e FLEXPRICE_API_KEY).
ENV DEAD_LETTER_PATH=/data/dead-letter \
    FLEXPRICE_API_SCHEME=https
VOLUME ["/data/dead-letter"]
EXPOSE 4195

USER 10001:10001
ENTRYPOINT ["/usr/local/bin/flexprice-beam-entrypoint"]
CMD ["run", "-c", "examples/generate.yaml"]
