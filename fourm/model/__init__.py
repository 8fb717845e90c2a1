"""The FourM encoder-decoder: attention, blocks, embeddings, the model, named sizes."""

from fourm.model.batch import Batch
from fourm.model.caches import DecodeCache, EncodeCache
from fourm.model.fourm import FourM, FourMConfig, FourMOutput, ModalityLogits
from fourm.model.sizes import SIZES, create_model, list_sizes, model_config

__all__ = ["SIZES", "Batch", "DecodeCache", "EncodeCache", "FourM", "FourMConfig", "FourMOutput", "ModalityLogits",
           "create_model", "list_sizes", "model_config"]
