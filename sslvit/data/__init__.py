"""WebDataset shards in, decoded and augmented batches out."""
