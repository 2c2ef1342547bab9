"""TFDS builder for FERV39k."""

from dferclip_jax.data.tfds_builders.ferv39k.ferv39k_dataset_builder import Builder  # noqa: F401
