"""From raw video to face clips: detect (MTCNN), follow one face, crop squares around it.

``detector`` wraps the optional ``mtcnn`` package (imported only here, only when faces are asked
for); ``tracking`` turns per-frame detections into one smooth box per frame (pure numpy);
``extract`` reads videos and frame folders and writes or returns the crops; ``labels`` turns your
own labelled videos into DFER-CLIP annotation lists. The command is ``dferclip_jax.cli.faces``.
"""
