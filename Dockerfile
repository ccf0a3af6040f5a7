# Chatterbox TTS worker for RunPod serverless.
# The base image ships torch 2.6.0 / torchaudio 2.6.0, chatterbox-tts 0.1.7's own pins.
FROM runpod/pytorch:1.0.2-cu1281-torch260-ubuntu2204

WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    TQDM_DISABLE=1 \
    HF_HOME=/opt/huggingface \
    PIP_NO_CACHE_DIR=1

COPY requirements.txt requirements-nodeps.txt ./
# requirements-nodeps.txt holds chatterbox-tts and s3tokenizer, whose declared
# requirements pull in packages the model never imports (see the comments there).
RUN python -m pip install -r requirements.txt \
 && python -m pip install --no-deps -r requirements-nodeps.txt

# Weights are fetched once, at build time, into the Hugging Face cache of the image, for
# the models named here (standard, multilingual, turbo; comma-separated). The same list
# becomes the run-time default of CHATTERBOX_MODELS.
ARG CHATTERBOX_MODELS=standard
ENV CHATTERBOX_MODELS=${CHATTERBOX_MODELS}
COPY scripts/download_weights.py scripts/
RUN python scripts/download_weights.py "${CHATTERBOX_MODELS}"

COPY . .

# At run time nothing is downloaded: the worker starts from the baked cache or not at all.
ENV HF_HUB_OFFLINE=1
# One image, both endpoint types: WORKER_MODE=queue (default) runs the queue handler,
# WORKER_MODE=http the HTTP server on PORT (load-balancing endpoints; /ping on PORT_HEALTH).
ENV WORKER_MODE=queue PORT=8000
EXPOSE 8000
CMD ["python", "-u", "main.py"]
