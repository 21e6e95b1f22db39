"""WebDataset shards in, decoded and augmented batches out."""

from sslvit.data import digits  # noqa: F401  registers the embedded "digits:train" / "digits:val"
