"""Text encoders: a bi-encoder (retriever) and a cross-encoder (ranker)."""

from ar2.encoders.bi_encoder import BiEncoder, default_model_path
from ar2.encoders.cross_encoder import CrossEncoder

__all__ = ["BiEncoder", "CrossEncoder", "default_model_path"]
