"""The test harness: real NATS JetStream, Postgres and Redis for every integration test."""
