"""Training: the generic step loop, the retriever and ranker trainers, and the AR2 rounds."""
