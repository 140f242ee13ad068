"""After training: asking a model about photos, seeing where it looks, exporting it.

predict   `predict_images`: top-k classes of any photos
explain   Grad-CAM pictures, top losses
export    ONNX, SavedModel, LiteRT, checked against the `.keras` model
"""
