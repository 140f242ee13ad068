"""After training: asking a model about photos, seeing where it looks, exporting it, serving it.

predict   `predict_images`, and `iter_predictions` (streaming): top-k classes of any photos
explain   Grad-CAM pictures, top losses
export    ONNX, SavedModel, LiteRT, checked against the `.keras` model
batcher   `MicroBatcher`: concurrent requests' photos in one forward pass
serve     `kflowers serve`: a page and a JSON API on Starlette and uvicorn (page.html: the page)
"""
