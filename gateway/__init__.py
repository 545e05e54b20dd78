"""The HTTP ingestion gateway: a Starlette app, deployed with Ray Serve, producing to Kafka."""
