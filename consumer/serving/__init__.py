"""What a serving layer reads: the factors topic's records, and an index that follows it."""
