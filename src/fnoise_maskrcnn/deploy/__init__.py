"""Using a trained model outside training: the library side of ``predict``, ``export`` and ``serve``.

- :mod:`.predict_files`: overlays and a COCO results file for image files (``predict``);
- :mod:`.export`: ONNX and TorchScript without F-Noise (``export``);
- :mod:`.service`: the FastAPI application and its model replica (``serve``, the ``serve`` extra);
- :mod:`.agreement`: whether an exported model's detections match eager PyTorch's.

Each loads its model with :func:`fnoise_maskrcnn.io.model_io.model_from_checkpoint` and runs it with
:func:`fnoise_maskrcnn.inference.predict_batch`. Import from the modules themselves.
"""
