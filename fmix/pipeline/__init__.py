"""The pipeline as a product: the stage table and its two front ends, profiles, the launcher, the report."""
