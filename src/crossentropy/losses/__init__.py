"""Training losses on torch tensors. Importing this module is the opt-in to torch."""
