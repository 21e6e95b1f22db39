"""Looking inside a trained backbone: what its attention sees (``attention``)."""
