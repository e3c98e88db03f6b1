# normcore dashboard: CPU-only, runs as a non-root user, listens on 8501.
#   docker build -t normcore .
#   docker run --rm -p 8501:8501 normcore
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=2

WORKDIR /app

# CPU torch first from PyTorch's CPU index, so requirements.txt finds it satisfied and
# does not pull the multi-GB CUDA build from PyPI.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The app, its pages and assets, and the package (.dockerignore keeps the rest out).
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 normcore

USER normcore
EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
