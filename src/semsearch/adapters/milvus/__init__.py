"""Milvus vector index backend: a Milvus collection holds the chunk vectors and their metadata."""
