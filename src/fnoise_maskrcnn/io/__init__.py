"""The I/O layer: every file the package reads or writes goes through these modules.

- :mod:`.atomic`: atomic writes (a crash leaves the old file or the new one) with one-line errors;
- :mod:`.images`: the one image reader (EXIF orientation, mode conversion, the pixel limit);
- :mod:`.checkpoint`: building, saving and safely loading checkpoints (no import of the model code);
- :mod:`.model_io`: rebuilding a trained model from a checkpoint alone;
- :mod:`.run_lock`: one training per output directory.

Import from the modules themselves (``from fnoise_maskrcnn.io.checkpoint import load_checkpoint``); this
package imports nothing, so that reading an annotation file does not import torch.
"""
