"""Data layer: readers per format -> Sentence -> aligned features -> batches."""
