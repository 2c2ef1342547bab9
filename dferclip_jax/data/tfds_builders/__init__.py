"""TFDS builders for DFEW, FERV39k and MAFW; importing this package registers them with TFDS.

  import dferclip_jax.data.tfds_builders  # then tfds.builder("dfew/fold1", data_dir=...)
"""

from dferclip_jax.data.tfds_builders import dfew  # noqa: F401
from dferclip_jax.data.tfds_builders import ferv39k  # noqa: F401
from dferclip_jax.data.tfds_builders import mafw  # noqa: F401
