# The one image behind every service of docker-compose.yml (api, ray-head, worker, gpu-worker).
FROM python:3.11-slim
WORKDIR /app
# CPU torch pinned first (a looser requirement pulls several GB of CUDA wheels); GPU hosts override the image.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY puzzle ./puzzle
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir -e ".[service]"
ENV PUZZLE_ARTIFACTS=/artifacts
EXPOSE 8000
CMD ["puzzle", "serve", "--host", "0.0.0.0", "--port", "8000"]
