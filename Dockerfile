# Minimal image for now; the multi-stage, non-root production image comes with the deployment work.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY unlearn_core ./unlearn_core
COPY consumer ./consumer
RUN pip install --no-cache-dir .
ENTRYPOINT ["unlearn"]
CMD ["--help"]
