# The image ray-cluster.yaml runs: Ray's own image plus eventray and its pinned dependencies.
FROM rayproject/ray:2.60.0-py311
WORKDIR /home/ray/eventray
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users actors ./actors
COPY --chown=ray:users gateway ./gateway
COPY --chown=ray:users cluster ./cluster
RUN pip install --no-cache-dir .
