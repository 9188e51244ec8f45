# The mailer's image: one image for the web, worker and beat processes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILER_INSTANCE_PATH=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mailer ./mailer
COPY templates ./templates
COPY worker.py ./
# Editable install: the templates folder stays beside the package, where the app looks.
RUN pip install --no-cache-dir -e . \
 && useradd --system --home-dir /data --create-home mailer
USER mailer
EXPOSE 8000
CMD ["mailer", "web", "--host", "0.0.0.0", "--port", "8000"]
