"""TFDS builder for MAFW."""

from dferclip_jax.data.tfds_builders.mafw.mafw_dataset_builder import Builder  # noqa: F401
