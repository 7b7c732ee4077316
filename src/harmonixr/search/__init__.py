"""Using the embeddings: the index (FAISS or Milvus), calibration and the ``Harmonixr`` API."""
