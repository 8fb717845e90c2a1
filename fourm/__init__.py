"""fourm: an open any-to-any multimodal model in the style of 4M-21 (arXiv 2406.09406).

``import fourm`` stays cheap: heavy packages (transformers, diffusers, webdataset, accelerate) are
imported inside the functions that use them.
"""

from fourm.modalities import CORPUS, MODALITIES, ModalityScale, corpus_modality, get_modality

__version__ = "0.1.0"
__all__ = ["CORPUS", "MODALITIES", "ModalityScale", "corpus_modality", "get_modality", "__version__"]
