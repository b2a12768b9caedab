# A BlockLab GPU worker: the training engine (PyTorch CUDA build + timm) behind a Celery worker.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY worker ./worker
RUN pip install --no-cache-dir ".[worker]"
ENV BLOCKLAB_HOME=/var/lib/blocklab BLOCKLAB_DATA_DIR=/data BLOCKLAB_WEIGHTS_DIR=/weights \
    BLOCKLAB_RUNS_DIR=/runs BLOCKLAB_CACHE_DIR=/cache BLOCKLAB_GPU_LOCK_DIR=/locks
CMD ["python", "-m", "worker.queue.gpu_worker"]
