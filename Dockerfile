# The Rewind operator image: the `rewind` package and its pinned dependencies, nothing of the test
# bed (testbed/ is never copied in), run as a non-root user, fit for a read-only root filesystem.
#
#   docker build -t registry.example.com/rewind:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp registry.example.com/rewind:0.1.0 --help
#
# There is no Docker engine on the development machines, so this file is not built there;
# tests/unit/test_image.py builds the wheel from exactly the sources copied below and checks that it
# holds the operator (with its package data) and not the test bed.
#
# The base image, pinned by digest. This digest of python:3.12-slim (Debian trixie) was taken from
# public Dockerfiles that pin it, not pulled here: verify it before a release with
#   docker buildx imagetools inspect python:3.12-slim
# and bump it (tag and digest together) with --build-arg PYTHON_IMAGE=python:3.12-slim@sha256:...
ARG PYTHON_IMAGE=python:3.12-slim@sha256:57cd7c3a7a273101a6485ba99423ee568157882804b1124b4dd04266317710de

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only the operator's sources: pyproject.toml finds the `rewind` package in operator/; testbed/ is
# neither in the build context (.dockerignore) nor copied, so `rewind_testbed` is not installed.
COPY pyproject.toml README.md ./
COPY operator ./operator
# The test bed's console script comes with pyproject.toml; its package is not in this image.
RUN python -m venv /opt/rewind \
 && /opt/rewind/bin/pip install ./ \
 && rm /opt/rewind/bin/rewind-testbed \
 && /opt/rewind/bin/rewind --version

FROM ${PYTHON_IMAGE}
# uid/gid 10001, as the chart's podSecurityContext expects (runAsUser/runAsGroup: 10001).
RUN groupadd --gid 10001 rewind \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rewind
COPY --from=build /opt/rewind /opt/rewind
# Bytecode was compiled at install time; nothing is written at run time (a read-only root
# filesystem works; Python's temporary files go to /tmp, an emptyDir in the chart).
ENV PATH=/opt/rewind/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["rewind"]
CMD ["run"]
