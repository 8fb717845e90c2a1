"""Runtime tokenizers: a modality as the corpus stores it <-> discrete token ids.

(Named ``tokenization`` so it never shadows Hugging Face's ``tokenizers`` package.)
"""
