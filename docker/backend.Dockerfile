# The BlockLab backend: FastAPI + the static frontend. No torch in this image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY backend ./backend
COPY frontend ./frontend
RUN pip install --no-cache-dir .
ENV BLOCKLAB_HOME=/var/lib/blocklab BLOCKLAB_HOST=0.0.0.0 BLOCKLAB_PORT=8000
EXPOSE 8000
CMD ["python", "-m", "backend.serve"]
