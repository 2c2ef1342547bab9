"""TFDS builder for DFEW."""

from dferclip_jax.data.tfds_builders.dfew.dfew_dataset_builder import Builder  # noqa: F401
