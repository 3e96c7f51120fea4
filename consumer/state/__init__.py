"""The model's state in Redis: factors, interactions, Gramians, ids, offsets, audit trail."""
