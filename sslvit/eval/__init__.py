"""Evaluation on frozen features: extraction (gathered over ranks) and its cache, FAISS k-NN and retrieval metrics, linear and few-shot probes, and the k-NN monitor callback."""
