# freshrec image: the CLI and read API, the Airflow components, the MLflow server and the Spark
# master/workers all run from this one image, so Spark's Python workers have exactly the packages
# the driver has. Build: `docker compose build` (or `docker build -t freshrec:local .`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JAVA_HOME=/usr/lib/jvm/java-17 \
    FRESHREC_HOME=/data/freshrec \
    AIRFLOW_HOME=/opt/airflow

# Java 17 for Spark; procps because Spark's launch scripts call `ps`; curl for the healthchecks.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps curl \
    && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/freshrec

# torch first, from the CPU index, so pip never resolves a multi-GB CUDA build. --no-deps: its
# dependencies come from PyPI in the next step, pinned by requirements.lock. 2.13.0+cpu satisfies
# the lock's torch==2.13.0, so the next step keeps it.
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Dependencies in their own layer (rebuilt only when pyproject.toml or requirements.lock change):
# install the project once against empty package stubs, then drop the stubs.
COPY pyproject.toml requirements.lock README.md ./
RUN mkdir -p freshrec jobs models \
    && touch freshrec/__init__.py jobs/__init__.py models/__init__.py \
    && pip install -c requirements.lock -e . \
    && rm -rf freshrec jobs models

# The project itself, editable so freshrec.airflow.env.REPO_ROOT is /opt/freshrec
# (dags/ and expectations/ are found beside the package, as in a checkout).
COPY . .
RUN pip install --no-deps -c requirements.lock -e . \
    && pip check \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda, torch.__version__"

# Unprivileged user; the state directories exist in the image so new named volumes mounted on
# them start out owned by this user.
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --no-create-home freshrec \
    && mkdir -p /data/freshrec /data/mlflow-artifacts /opt/airflow/logs \
    && chown -R 50000:0 /data /opt/airflow \
    && chmod -R g+rwX /data /opt/airflow
USER 50000

EXPOSE 8000
CMD ["freshrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
