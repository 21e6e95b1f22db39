"""Evaluation on frozen features: FAISS k-NN, and the callbacks that report it."""
