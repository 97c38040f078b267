FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 realtime

WORKDIR /app
# The whole project is copied (not just the package): `realtime migrate` runs from
# /app and needs the top-level migrations/ directory next to it.
COPY . .
RUN pip install --no-cache-dir . \
 && rm -rf build *.egg-info \
 && chown -R realtime:realtime /app

USER realtime
EXPOSE 8000
CMD ["realtime", "serve", "--host", "0.0.0.0", "--port", "8000"]
