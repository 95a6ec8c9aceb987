FROM python:3.11-slim
WORKDIR /app
# the CPU build of torch first: a bare `torch` would pull a multi-GB CUDA build
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY stream stream
COPY store store
COPY models models
COPY evaluation evaluation
COPY streamrec streamrec
RUN pip install --no-cache-dir '.[postgres]'
ENTRYPOINT []
CMD ["streamrec", "--help"]
