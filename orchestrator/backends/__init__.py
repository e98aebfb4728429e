"""Guest backends: each starts a guest, gives monitor access, and always cleans up."""
