# One image for the scheduler and the worker pods.
#   scheduler: miniflow scheduler        (the Deployment in deploy/)
#   worker:    miniflow-worker run ...   (the command the Kubernetes launcher gives worker pods)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY miniflow ./miniflow
COPY worker ./worker
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --uid 1000 --create-home miniflow
COPY --from=build /install /usr/local
# DAG files are baked in here (or mounted / git-synced at the same path).
COPY --chown=1000:1000 examples/dags /opt/miniflow/dags
ENV MINIFLOW_DAGS_FOLDER=/opt/miniflow/dags \
    MINIFLOW_POD_DAGS_FOLDER=/opt/miniflow/dags \
    MINIFLOW_LAUNCHER=kubernetes \
    PYTHONUNBUFFERED=1
USER 1000
CMD ["miniflow", "scheduler"]
