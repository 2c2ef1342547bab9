"""The local web demo (``python -m dferclip_jax.cli.demo``)."""
