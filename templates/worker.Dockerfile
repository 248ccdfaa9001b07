# Dataflow worker SDK container of every riverbeam pipeline (the flex templates' default sdk_container_image).
# Beam's own Python 3.11 SDK image at the pinned Beam version, with riverbeam[beam] (tensorflow-transform, River,
# riverbeam's packages) installed at build time, so workers import what the pipelines' DoFns use without
# installing anything at launch. Build from the repository root, next to the launcher images:
#   docker build -f templates/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/riverbeam/worker:VERSION .
#   docker push REGION-docker.pkg.dev/PROJECT/riverbeam/worker:VERSION
# then pass it to `riverbeam templates build --worker-image ...`.
# The tag must equal apache-beam's pin in constraints.txt (a test checks it).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /riverbeam

COPY setup.py README.md ./
COPY constraints.txt ./
COPY core ./core
COPY transforms ./transforms
COPY online ./online
COPY pipelines ./pipelines
COPY riverbeam ./riverbeam

# The same install step as the launcher's (templates/Dockerfile): same setup.py, same constraints.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c constraints.txt '.[beam]'

# The SDK image's entrypoint (/opt/apache/beam/boot) starts the worker harness: keep it.
