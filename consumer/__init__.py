"""The unlearn service: files, Kafka, Redis, metrics and the command line around unlearn_core."""
