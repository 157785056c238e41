FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flowscope ./flowscope
COPY exporter ./exporter
COPY backend ./backend
RUN pip install --no-cache-dir '.[server]'
# The store (SQLite unless FLOWSCOPE_DATABASE_URL names PostgreSQL) lives in a volume at an absolute path that
# the non-root user owns; a fresh named volume takes that ownership from the image. The user is numeric so that
# an orchestrator can check it is not root (Kubernetes runAsNonRoot). docker-compose.yml probes readiness
# (GET /api/v1/ready); the image sets no HEALTHCHECK because `demo` runs from it too, with no server.
RUN groupadd --system --gid 10001 flowscope \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/flowscope flowscope \
    && mkdir -p /var/lib/flowscope && chown 10001:10001 /var/lib/flowscope
ENV FLOWSCOPE_HOST=0.0.0.0 FLOWSCOPE_PORT=9464 \
    FLOWSCOPE_DATABASE_URL=sqlite:////var/lib/flowscope/flowscope.db
VOLUME ["/var/lib/flowscope"]
EXPOSE 9464
USER 10001:10001
ENTRYPOINT ["flowscope"]
CMD ["serve"]
