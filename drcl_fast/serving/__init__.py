"""What a run leaves behind to use: the model folder, gallery indexes, search and export.

- `model_folder`: `TrainedModel` (encode, search, save) and `load_model`;
- `gallery_index`: `GalleryIndex`, a gallery encoded once and kept, and `build_index`;
- `export`: an encoder for serving without this package (`torch.export` .pt2, ONNX);
- `commands`: `drcl-fast index`, `search` and `export`.
"""
from drcl_fast.serving.gallery_index import GalleryIndex, build_index
from drcl_fast.serving.model_folder import TrainedModel, load_model

__all__ = ["TrainedModel", "load_model", "GalleryIndex", "build_index"]
