# syntax=docker/dockerfile:1
# Build stage: install the package and its wheels into a virtualenv, exactly from
# pyproject.toml as `.ci/run` does (without the test extras).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/unlearn
COPY pyproject.toml README.md ./
COPY unlearn_core ./unlearn_core
COPY consumer ./consumer
RUN /opt/unlearn/bin/pip install .

# Final stage: the virtualenv only; no compiler, no pip cache, a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin unlearn
COPY --from=build /opt/unlearn /opt/unlearn
# Rows are solved in parallel by unlearn's threads and implicit's OpenMP loop; BLAS must not
# spawn its own threads on top (the chart sets OMP_NUM_THREADS from the CPU limit).
ENV PATH=/opt/unlearn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=2 \
    UNLEARN_METRICS_PORT=9108
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['UNLEARN_METRICS_PORT'] + '/healthz', timeout=2)"]
ENTRYPOINT ["unlearn"]
CMD ["run"]
