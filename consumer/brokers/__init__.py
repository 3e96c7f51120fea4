"""Where the service gets its Kafka clients: the real broker's (kafka.py), or an in-memory
broker (local.py) that the commit order's tests run the whole service against."""
