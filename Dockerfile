FROM python:3.14-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 WORKERS=1
WORKDIR /code
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY app ./app

EXPOSE 8000
# exec: uvicorn gets SIGTERM itself and flushes held votes before exiting.
CMD ["sh", "-c", "exec uvicorn app.main:create_app --factory --host 0.0.0.0 --port 8000 --loop uvloop --http app.core.service_protocol:ServiceProtocol --no-access-log --workers ${WORKERS}"]
