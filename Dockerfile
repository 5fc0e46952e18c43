# One image for the scheduler and the worker pods (deploy/ runs both from it).
#   scheduler: miniflow scheduler        (the Deployment in deploy/base)
#   worker:    miniflow-worker run ...   (the command the Kubernetes launcher gives worker pods)
#   migrate:   miniflow db upgrade       (the Job in deploy/base, as the database owner)
# Build:   docker build -t registry.example/miniflow:0.1.0 .
#          docker build --build-arg DAGS=path/to/your/dags -t ... .   (your DAGs baked in)
# Extend:  FROM registry.example/miniflow:0.1.0, then pip install your DAGs' dependencies
#          (docs/deploy.md, "Your own worker image").

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY miniflow ./miniflow
COPY worker ./worker
# A virtual environment at the path it keeps in the final stage: its scripts' shebangs
# stay valid and nothing of the build (compilers, wheels, the pip cache) follows it.
RUN python -m venv /opt/miniflow/venv \
 && /opt/miniflow/venv/bin/pip install /src

FROM python:3.11-slim
ARG DAGS=examples/dags
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="miniflow" \
      org.opencontainers.image.description="A small, asyncio-native workflow scheduler that runs one Kubernetes pod per task." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}"
# uid/gid 1000: the runAsUser of worker pods (miniflow.launchers.pods.WORKER_UID) and of
# the securityContexts in deploy/; numeric, so Kubernetes can verify runAsNonRoot.
RUN groupadd --gid 1000 miniflow \
 && useradd --uid 1000 --gid 1000 --no-log-init --create-home miniflow
COPY --from=build /opt/miniflow/venv /opt/miniflow/venv
# DAG files are baked in here (or mounted / git-synced at the same path).
COPY --chown=1000:1000 ${DAGS} /opt/miniflow/dags
ENV PATH=/opt/miniflow/venv/bin:$PATH \
    MINIFLOW_DAGS_FOLDER=/opt/miniflow/dags \
    MINIFLOW_POD_DAGS_FOLDER=/opt/miniflow/dags \
    MINIFLOW_LAUNCHER=kubernetes \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /home/miniflow
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (deploy/base).
CMD ["miniflow", "scheduler"]
