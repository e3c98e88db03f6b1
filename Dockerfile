# normcore dashboard: CPU-only torch, runs as a non-root user, listens on 8501.
#   docker build -t normcore .
#   docker run --rm -p 8501:8501 normcore
# Checked by tests/hardening/test_dockerfile.py (hadolint from requirements-dev.txt).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NORMCORE_THREADS=1 \
    OMP_NUM_THREADS=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /app

# CPU torch first from PyTorch's CPU wheel index, so requirements.txt finds it satisfied
# and does not pull the multi-GB CUDA build from PyPI.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install -r requirements.txt

# The app, its pages, its config and the demo model (.dockerignore keeps the rest out).
# Files stay owned by root: the app's user can read them but not change them.
COPY . .
RUN pip install --no-deps . \
    && test -s assets/demo/fcon1000.normcore \
    && test -s assets/demo/fcon1000_test.csv \
    && useradd --create-home --uid 10001 normcore

# Numeric uid: resolvable without /etc/passwd lookups (Kubernetes runAsNonRoot checks it).
USER 10001
EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

# .streamlit/config.toml in /app holds the settings (usage statistics off, headless,
# upload limit); only where to listen is given here. serve.py is `streamlit run
# app.py` with the first page computed before the server opens and no public-address
# lookup (which listening on 0.0.0.0 would otherwise send to checkip.amazonaws.com).
CMD ["python", "serve.py", "--server.address=0.0.0.0", "--server.port=8501"]
