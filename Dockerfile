# pulid-bot on a CUDA runtime: `docker build -t pulid-bot .`, then
#   docker run --gpus all -v pulid-data:/data -v pulid-models:/models \
#     -e PULID_BOT__ENGINE__PRESET=flux-dev -e PULID_BOT__ENGINE__DEVICES='["cuda:0"]' \
#     -e PULID_BOT__DISCORD__TOKEN=... pulid-bot
# Download the weights once into the models volume:
#   docker run --rm -v pulid-models:/models -e PULID_BOT__ENGINE__PRESET=flux-dev \
#     -e HF_TOKEN=... pulid-bot pulid-bot models download --accept-licence
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY engine engine
COPY storage storage
RUN pip install .

ENV PULID_BOT__STORAGE__DATA_DIR=/data \
    PULID_BOT__DATABASE__URL=sqlite+aiosqlite:////data/pulid-bot.db \
    PULID_BOT__ENGINE__MODEL_DIR=/models \
    HF_HOME=/models/hf

VOLUME ["/data", "/models"]
CMD ["sh", "-c", "pulid-bot db upgrade && exec pulid-bot serve"]
