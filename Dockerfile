# quotagate's image: one package, and the gateway, the worker and the scheduler are its
# subcommands (docker-compose.yml runs each as a service).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY lua ./lua
COPY src ./src
RUN pip install . && rm -rf /build

# An unprivileged user; the keys folder is where the one-off setup leaves the proxy's hook key.
RUN useradd --system --create-home --uid 10001 quotagate \
    && mkdir -p /var/lib/quotagate/keys \
    && chown -R quotagate /var/lib/quotagate
USER quotagate
WORKDIR /home/quotagate

EXPOSE 8080
ENTRYPOINT ["quotagate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
