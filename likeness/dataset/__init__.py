"""What the dataset stages share: the variation catalogue, curation and captions."""
